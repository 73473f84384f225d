"""Server adaptation by distillation (students trained on protected inputs)."""

from faceveil.train.distill import DISTILL_PROFILES, DistillConfig, adapted_server, clean_defense, distill_config, train_student

__all__ = ["DISTILL_PROFILES", "DistillConfig", "adapted_server", "clean_defense", "distill_config", "train_student"]
