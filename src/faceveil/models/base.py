"""One recogniser interface for every face model (dlib ResNet, faceres, mobilefacenet, ...).

Conventions used everywhere in faceveil:
- images are float32 tensors ``[B, 3, H, W]``, RGB, values in ``[0, 1]``;
- a recogniser declares the aligned crop it expects (:class:`CropSpec`); chips of another size are
  resized bilinearly in :meth:`Recognizer.prepare`;
- ``forward`` is batched and differentiable with respect to the input;
- ``split(at)`` returns ``(client, server)`` with ``server(client(x)) == model(x)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.config import cache_dir
from faceveil.data.crop import CropSpec
from faceveil.devices import autocast, module_device
from faceveil.errors import FaceveilDataError
from faceveil.storage import load_cache, write_json_atomic


@dataclass
class OperatingPoint:
    """A fixed decision threshold for the deployed recogniser (fit once, saved with the model)."""

    metric: str  # "euclidean" or "cosine"
    threshold: float  # accept when distance <= threshold
    fit_on: str  # e.g. "lfw pairsDevTrain.txt"
    train_accuracy: float

    def accept(self, d: Tensor) -> Tensor:
        return d <= self.threshold


def pairwise_distance(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Row-wise distance between embeddings: Euclidean, or cosine distance ``1 - cos``. ``a`` and ``b``
    must have the same shape (no silent broadcasting of a probe batch against a gallery of another size)."""
    if a.shape != b.shape:
        raise FaceveilDataError(f"distance between embeddings of shapes {list(a.shape)} and {list(b.shape)}: "
                                "row-wise comparison needs equal shapes (one probe per stored template)")
    if metric == "euclidean":
        return (a - b).norm(dim=-1)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1)
    raise ValueError(f"unknown metric {metric!r}")


#: how far outside [0, 1] a float image may stray (rounding of resampling) before it is refused
RANGE_TOLERANCE = 1e-4


def check_images(x: Tensor, what: str = "images", strict: bool = False) -> Tensor:
    """Validate a ``[B,3,H,W]`` float image batch; raise a clear :class:`FaceveilDataError` otherwise.

    ``strict`` (public entry points: ``Defense.protect``, ``Recognizer.embed``) also requires float32,
    values in [0, 1] and a non-empty batch, so a 0-255 tensor, a float64/float16 array or an empty batch
    is named instead of silently giving a wrong result; internal forward passes (attacks, training) use
    the lenient check."""
    if not isinstance(x, Tensor):
        raise FaceveilDataError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise FaceveilDataError(f"{what}: expected shape [B,3,H,W], got {list(x.shape)}")
    if not torch.is_floating_point(x):
        raise FaceveilDataError(f"{what}: expected float values in [0,1], got dtype {x.dtype}")
    if strict:
        if x.dtype != torch.float32:
            raise FaceveilDataError(f"{what}: expected float32, got {x.dtype} (convert with x.float())")
        if x.shape[0] == 0:
            raise FaceveilDataError(f"{what}: empty batch (no images)")
        if min(x.shape[-2:]) < 8:
            raise FaceveilDataError(f"{what}: images of {x.shape[-2]}x{x.shape[-1]} pixels are too small to be faces")
    if not torch.isfinite(x).all():
        raise FaceveilDataError(f"{what}: contains NaN or infinite values")
    if strict:
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            hint = " (0-255 values? divide by 255)" if hi > 1.5 else ""
            raise FaceveilDataError(f"{what}: values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def check_batch_size(batch_size: int, what: str = "batch_size") -> int:
    """A positive integer batch size, or a clear error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise FaceveilDataError(f"{what} must be a positive integer, got {batch_size!r}")
    return batch_size


class Recognizer(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``forward``/``layer_names``."""

    name: str = "base"
    embedding_dim: int = 0
    crop: CropSpec = CropSpec(150, 0.25)
    metric: str = "euclidean"

    @property
    def input_size(self) -> int:
        return self.crop.size

    def prepare(self, x: Tensor) -> Tensor:
        """Resize a ``[B,3,H,W]`` image batch to the model's input size (bilinear) if needed."""
        return prepare_images(x, self.input_size)

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """Embeddings of an image batch (no gradient), computed in chunks of ``batch_size``."""
        check_images(x, f"{self.name}.embed() input", strict=True)
        check_batch_size(batch_size)
        self.eval()
        dev = module_device(self)  # the batch goes to the model's device, the embeddings come back to the CPU
        with autocast(dev):  # --precision bf16: the forward pass in bfloat16, the embeddings back in float32
            out = [self(self.prepare(x[i : i + batch_size].to(dev))).float().cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return pairwise_distance(a, b, self.metric)

    # --- split / intermediate layers -------------------------------------------------------------
    def layer_names(self) -> list[str]:
        raise NotImplementedError(f"{self.name} cannot be split")

    def split(self, at: str | int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError(f"{self.name} cannot be split")

    def features(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{self.name} does not expose intermediate layers")

    # --- operating point -------------------------------------------------------------------------
    def operating_point_path(self) -> Path:
        return cache_dir("models") / f"{self.name}.operating_point.json"

    def operating_point(self) -> OperatingPoint | None:
        return load_cache(self.operating_point_path(), lambda p: OperatingPoint(**json.loads(p.read_text())),
                          "operating point", "discarded; it is fitted again on LFW when needed")

    def save_operating_point(self, op: OperatingPoint) -> None:
        write_json_atomic(self.operating_point_path(), asdict(op), checksum=True, indent=2)


def fast_layout(model: nn.Module) -> nn.Module:
    """The model with its 4-D weights in channels-last memory order: the same values, but the CPU
    convolutions run faster (one thread, batch 32, measured in one run on a loaded machine: forward
    1.3-1.5x for dlib ResNet, faceres and mobilefacenet, forward+backward 1.15-1.25x; outputs equal to ~3e-6;
    ``bench/recognizer_speed.py --layouts``)."""
    return model.to(memory_format=torch.channels_last)


def prepare_images(x: Tensor, size: int) -> Tensor:
    """Check a ``[B,3,H,W]`` batch in [0,1] and resize it to ``size`` (bilinear, antialiased) if needed:
    the input step shared by recognisers and attribute models."""
    check_images(x)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x
