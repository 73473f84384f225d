"""No protection: the unprotected baseline every defense is compared with."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer


@register_defense("none")
class NoDefense(Defense):
    """The client sends its data in the clear: the aligned chip (``transmit="image"``), the
    recogniser's embedding (``"embedding"``, 128-D for dlib) or the output of the client part of a
    split recogniser (a layer name such as ``"res1"``: a shallow feature map)."""

    side = "client"
    HELP: ClassVar[dict[str, str]] = {"transmit": "image | embedding | a layer name of the recogniser (e.g. res1)"}

    def __init__(self, *, transmit: str = "embedding", recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        self.transmit = transmit
        if transmit not in ("image", "embedding"):
            self.recognizer.split(transmit)  # validates the layer name
        self._parts: tuple[nn.Module, nn.Module] | None = None

    @property
    def domain(self) -> str:  # type: ignore[override]
        return "image" if self.transmit == "image" else "feature"

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return {"image": "image", "embedding": "vector"}.get(self.transmit, "map")

    def _split(self) -> tuple[nn.Module, nn.Module]:
        if self._parts is None:
            self._parts = self.recognizer.split(self.transmit)
        return self._parts

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x = self.recognizer.prepare(self._check_images(x))
        if self.transmit == "image":
            return x
        if self.transmit == "embedding":
            return self.recognizer(x)
        return self._split()[0](x)

    def frozen_server(self) -> nn.Module:
        if self.transmit == "image":
            return self.recognizer
        if self.transmit == "embedding":
            return nn.Identity()
        return self._split()[1]

    def make_student(self, sample: Tensor, cfg) -> nn.Module:
        """The named server-part student for plain split maps: a trainable copy of the recogniser's layers after
        the cut (:class:`~faceveil.models.students.ServerPartStudent`), the same-budget reference of AdvFace's
        offline server (its Table 2 row "Ψ retrained on plain z")."""
        if self.input_kind != "map":
            raise ValueError(f"none: a server-part student needs split maps (transmit=<layer>), not {self.transmit!r}")
        from faceveil.models.students import ServerPartStudent

        return ServerPartStudent(self.transmit, self.recognizer.name)

    def stored_shape(self) -> tuple[int, ...]:
        if self.transmit == "image":
            return super().stored_shape()
        with torch.no_grad():
            s = self.recognizer.input_size
            return tuple(self.protect(torch.zeros(1, 3, s, s)).shape[1:])

    def storage_bytes(self) -> int:
        if self.transmit == "image":
            s = self.recognizer.input_size
            return 3 * s * s  # uint8 chip
        return super().storage_bytes()
