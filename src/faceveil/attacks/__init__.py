"""Attacks, one file each, registered by name: ``get_attack("dn", target_size=112)``."""

from __future__ import annotations

from faceveil.attacks.base import (
    ATTACKS,
    PROFILES,
    Attack,
    Budget,
    DefenseSpecificAttack,
    OptimizationAttack,
    PairSource,
    ReconstructionAttack,
    ThreatModel,
    get_attack,
    profile_budget,
    register_attack,
)


def attack_names() -> list[str]:
    return ATTACKS.names()


__all__ = ["ATTACKS", "PROFILES", "Attack", "Budget", "DefenseSpecificAttack", "OptimizationAttack", "PairSource",
           "ReconstructionAttack", "ThreatModel", "get_attack", "profile_budget", "register_attack", "attack_names"]
