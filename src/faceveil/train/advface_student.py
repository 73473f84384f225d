"""The offline AdvFace server (Wang et al., CVPR 2023, Section 4.4): the deployed server part Ψ of
the split dlib ResNet, copied and fine-tuned on stored adversarial features.

The paper retrains the server-side layers on adversarial features; the CPU equivalent here is the
project's distillation (:mod:`faceveil.train.distill`): a student learns
``f(protect_stored(E(x))) ~ teacher(x)`` (cosine + MSE to the frozen dlib ResNet's embeddings of the
clean chips). The student starts *from* Ψ — not from the whole recogniser behind an input adapter,
which is what :func:`faceveil.train.distill.make_student` builds for other map inputs — plus a
per-channel input affine (initialised to the identity) at the full learning rate; Ψ's layers get a
fiftieth of it (:data:`BODY_LR_FACTOR`).

Why a fiftieth, not the tenth of :class:`~faceveil.models.students.FinetuneStudent`: Ψ already reads
adversarial features well (the frozen Ψ's embeddings of held-out adversarial features have cosine
0.962 to the clean ones), and a few hundred public faces are few for its 5 M weights. Measured on
5 Dec (quick shadow; 500 public faces x 2 flips, 6 epochs; held-out = the 1,138 LFW images of 600
pairs): body at lr/10 → held-out cosine 0.960 (below the frozen Ψ: retraining hurt, which is what
the earlier quick student did), lr/50 → 0.964; with 1,500 faces, 0.968.

:func:`adapted_server_part` trains it with :func:`faceveil.train.distill.adapted_server` (same loop,
schedule, flips, one protection per image and flip, cache) with ``student=STUDENT_NAME`` in the
distillation config (so its cache key differs from the default students'); ``distill`` asks the defense
for that student (``AdvFace.make_student``: :class:`~faceveil.models.students.ServerPartStudent`).
"""

from __future__ import annotations

from torch import nn

from faceveil.defenses.base import Defense
from faceveil.models.students import SERVER_PART_BODY_LR, ServerPartStudent

__all__ = ["BODY_LR_FACTOR", "STUDENT_NAME", "ServerPartStudent", "adapted_server_part"]

#: ``DistillConfig.student`` value of this student (part of the cache key)
STUDENT_NAME = "advface-server-v2"  # v2: body at lr / 50 (v1: lr / 10)
#: Ψ's learning rate relative to the input affine's (see the module docstring)
BODY_LR_FACTOR = SERVER_PART_BODY_LR


def adapted_server_part(defense: Defense, at: str = "res1", profile: str = "quick", seed: int = 0, data=None,
                        force: bool = False, progress: bool = True, **overrides) -> nn.Module:
    """The offline server for ``defense`` (features at ``at``): :class:`ServerPartStudent` distilled
    on ``defense.server_training_input`` (trained once, cached by config hash). ``overrides`` are
    :class:`~faceveil.train.distill.DistillConfig` fields (e.g. ``train_images``, ``epochs``)."""
    from faceveil.train.distill import adapted_server

    if getattr(defense, "at", at) != at:
        raise ValueError(f"adapted_server_part: the defense splits at {defense.at!r}, not {at!r}")
    return adapted_server(defense, profile=profile, seed=seed, data=data, force=force, progress=progress,
                          student=STUDENT_NAME, **overrides)
