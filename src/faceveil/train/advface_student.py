"""The offline AdvFace server (Wang et al., CVPR 2023, Section 4.4): the deployed server part Ψ of
the split dlib ResNet, copied and fine-tuned on stored adversarial features.

The paper retrains the server-side layers on adversarial features; the CPU equivalent here is the
project's distillation (:mod:`faceveil.train.distill`): a student learns
``f(protect_stored(E(x))) ~ teacher(x)`` (cosine + MSE to the frozen dlib ResNet's embeddings of the
clean chips). The student starts *from* Ψ — not from the whole recogniser behind an input adapter,
which is what :func:`faceveil.train.distill.make_student` builds for other map inputs — plus a
per-channel input affine (initialised to the identity) at the full learning rate; Ψ's layers get a
fiftieth of it (:data:`BODY_LR_FACTOR`).

Why a fiftieth, not the tenth of :class:`~faceveil.train.students.FinetuneStudent`: Ψ already reads
adversarial features well (the frozen Ψ's embeddings of held-out adversarial features have cosine
0.962 to the clean ones), and a few hundred public faces are few for its 5 M weights. Measured on
5 Dec (quick shadow; 500 public faces x 2 flips, 6 epochs; held-out = the 1,138 LFW images of 600
pairs): body at lr/10 → held-out cosine 0.960 (below the frozen Ψ: retraining hurt, which is what
the earlier quick student did), lr/50 → 0.964; with 1,500 faces, 0.968.

:func:`adapted_server_part` trains it with :func:`faceveil.train.distill.adapted_server` (same loop,
schedule, flips, one protection per image and flip, cache) with ``student=STUDENT_NAME`` in the
distillation config (so its cache key differs from the default students'). Until ``distill`` asks a
defense for its student (the proposed ``Defense.make_student(sample, cfg)`` hook; AdvFace already
implements it), the student factory is swapped in for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from faceveil.defenses.base import Defense

#: ``DistillConfig.student`` value of this student (part of the cache key)
STUDENT_NAME = "advface-server-v2"  # v2: body at lr / 50 (v1: lr / 10)
#: Ψ's learning rate relative to the input affine's (see the module docstring)
BODY_LR_FACTOR = 1 / 50


class ServerPartStudent(nn.Module):
    """A trainable copy of the dlib ResNet's layers after ``at`` (Ψ), behind a per-channel affine
    ``x * scale + shift`` (identity at initialisation, so the untrained student *is* Ψ)."""

    def __init__(self, at: str = "res1") -> None:
        super().__init__()
        from faceveil.models import get_recognizer

        base = get_recognizer("dlib")  # a fresh model: never shares weights with the teacher
        client, server = base.split(at)
        s = base.input_size
        with torch.no_grad():
            c = client(torch.zeros(1, 3, s, s)).shape[1]
        self.at = at
        self.scale = nn.Parameter(torch.ones(c))
        self.shift = nn.Parameter(torch.zeros(c))
        self.body = server
        for p in self.body.parameters():
            p.requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.scale.numel():
            raise ValueError(f"server student expects [B,{self.scale.numel()},H,W] features, got {list(x.shape)}")
        return self.body(torch.addcmul(self.shift[:, None, None], x, self.scale[:, None, None]))

    def param_groups(self, lr: float) -> list[dict]:
        """Ψ's pretrained layers at ``lr * BODY_LR_FACTOR``, the new input affine at lr."""
        return [{"params": list(self.body.parameters()), "lr": lr * BODY_LR_FACTOR}, {"params": [self.scale, self.shift], "lr": lr}]


@contextmanager
def _server_part_students(at: str) -> Iterator[None]:
    """Make :func:`faceveil.train.distill.make_student` build :class:`ServerPartStudent` for the
    duration (restored afterwards). Replaced by the ``Defense.make_student`` hook once it exists."""
    from faceveil.train import distill

    original = distill.make_student

    def factory(sample: Tensor, cfg, emb_dim: int = 128) -> nn.Module:
        if cfg.student != STUDENT_NAME:
            return original(sample, cfg, emb_dim)
        return ServerPartStudent(at)

    distill.make_student = factory
    try:
        yield
    finally:
        distill.make_student = original


def adapted_server_part(defense: Defense, at: str = "res1", profile: str = "quick", seed: int = 0, data=None,
                        force: bool = False, progress: bool = True, **overrides) -> nn.Module:
    """The offline server for ``defense`` (features at ``at``): :class:`ServerPartStudent` distilled
    on ``defense.server_training_input`` (trained once, cached by config hash). ``overrides`` are
    :class:`~faceveil.train.distill.DistillConfig` fields (e.g. ``train_images``, ``epochs``)."""
    from faceveil.train.distill import adapted_server

    with _server_part_students(at):
        return adapted_server(defense, profile=profile, seed=seed, data=data, force=force, progress=progress,
                              student=STUDENT_NAME, **overrides)
