"""Attacks, one file each, registered by name: ``get_attack("dn", target_size=112)``."""

from __future__ import annotations

import importlib

from faceveil.attacks.base import (
    ATTACKS,
    PROFILES,
    Attack,
    Budget,
    OptimizationAttack,
    PairSource,
    ReconstructionAttack,
    ThreatModel,
    get_attack,
    profile_budget,
    register_attack,
)

_MODULES = ["dn", "urec", "resrec", "transrec", "cgan", "whitebox"]
for _m in _MODULES:
    try:
        importlib.import_module(f"faceveil.attacks.{_m}")
    except ModuleNotFoundError as _e:  # an attack not written yet
        if _e.name != f"faceveil.attacks.{_m}":
            raise


def attack_names() -> list[str]:
    return ATTACKS.names()


__all__ = ["ATTACKS", "PROFILES", "Attack", "Budget", "OptimizationAttack", "PairSource", "ReconstructionAttack",
           "ThreatModel", "get_attack", "profile_budget", "register_attack", "attack_names"]
