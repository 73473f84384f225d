"""Defenses, one file each, registered by name: ``get_defense("blur", k=16)`` (every module of this
package is imported on first use: a new defense is one new file)."""

from __future__ import annotations

from faceveil.defenses.base import DEFENSES, Defense, get_defense, register_defense
from faceveil.keys import SecretKey


def defense_names() -> list[str]:
    return DEFENSES.names()


__all__ = ["DEFENSES", "Defense", "SecretKey", "get_defense", "register_defense", "defense_names"]
