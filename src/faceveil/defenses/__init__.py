"""Defenses, one file each, registered by name: ``get_defense("blur", k=16)``."""

from __future__ import annotations

import importlib

from faceveil.defenses.base import DEFENSES, Defense, get_defense, register_defense
from faceveil.keys import SecretKey

_MODULES = [
    "none", "noise", "blur", "pixelate", "mask", "advnoise", "laplace", "randperturb", "instahide",
    "facemix", "faceobfuscator", "advface", "pmt", "deepblur",
]
for _m in _MODULES:
    try:
        importlib.import_module(f"faceveil.defenses.{_m}")
    except ModuleNotFoundError as _e:  # a defense not written yet
        if _e.name != f"faceveil.defenses.{_m}":
            raise


def defense_names() -> list[str]:
    return DEFENSES.names()


__all__ = ["DEFENSES", "Defense", "SecretKey", "get_defense", "register_defense", "defense_names"]
