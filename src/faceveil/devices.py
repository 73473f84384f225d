"""Where faceveil computes: ``--device auto|cpu|cuda[:N]|mps`` for every command.

One process-wide device (``FACEVEIL_DEVICE``, set by the CLI's global ``--device`` and inherited by the bench's
worker processes): recognisers are created on it (:func:`faceveil.models.get_recognizer`), trained networks
(attackers, students) are built on it, and data moves to the device of the module it meets
(:func:`module_device`); results come back to the CPU, where caches, metrics and reports live. Randomness
that must reproduce across machines (seeded research draws, protection keys) is drawn on the CPU and moved,
so a GPU run gives the same protected data as a CPU run.

``--precision fp32|bf16`` (``FACEVEIL_PRECISION``): ``bf16`` runs the networks' forward passes (recognisers'
embeddings, the attackers' and students' training and inference) under ``torch.autocast`` in bfloat16, on the
CPU as on a GPU; weights, optimiser state, losses, metrics and the client's protection stay float32. Every cache
key of a bf16 run carries the precision (:func:`faceveil.config.config_hash`), so bf16 and fp32 artefacts never
mix. Tolerance (tests/test_devices.py, real LFW faces): the deployed recogniser's bf16 embeddings are within
cosine 0.9999 of the fp32 ones and give the same verification decisions but for a handful of pairs at the
threshold. fp32 is the default: the committed results are fp32.
"""

from __future__ import annotations

import os
import platform
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from faceveil.errors import FaceveilError

#: environment variable holding the device spec of this process (and of the worker processes it starts)
DEVICE_ENV = "FACEVEIL_DEVICE"
#: what ``--device`` accepts (``cuda:N`` too)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: environment variable holding the precision of this process's networks (inherited by bench workers)
PRECISION_ENV = "FACEVEIL_PRECISION"
#: what ``--precision`` accepts
PRECISIONS = ("fp32", "bf16")


class FaceveilDeviceError(FaceveilError, ValueError):
    """An unknown or unavailable device."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device of ``spec``: ``auto`` = the first of CUDA, MPS, CPU that is available; ``cpu``;
    ``cuda`` / ``cuda:N``; ``mps``. An unavailable device is a clear error, not a silent CPU fallback."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_CHOICES[1:] or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise FaceveilDeviceError(f"unknown device {spec!r}; use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise FaceveilDeviceError("--device cuda: this torch build or machine has no CUDA device "
                                      f"(torch {torch.__version__}); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise FaceveilDeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not _mps_available():
        raise FaceveilDeviceError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return torch.device(spec)


def use_device(spec: str | torch.device) -> torch.device:
    """Resolve ``spec`` and make it this process's device (and its child processes')."""
    dev = resolve_device(spec)
    os.environ[DEVICE_ENV] = str(dev)
    return dev


def current_device() -> torch.device:
    """This process's device (``FACEVEIL_DEVICE``; default the CPU, so a library call never moves to a GPU
    unasked)."""
    return resolve_device(os.environ.get(DEVICE_ENV) or "cpu")


def device_name(dev: torch.device | str | None = None) -> str:
    """A human name of the device (GPU model, or the CPU's processor and core count)."""
    dev = resolve_device(dev) if dev is not None else current_device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    proc = platform.processor() or platform.machine()
    return f"CPU {proc}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def device_record(dev: torch.device | str | None = None) -> dict:
    """What every result records about where it ran: ``{"device": "cpu", "device_name": ..., "precision":
    "fp32"}``."""
    dev = resolve_device(dev) if dev is not None else current_device()
    return {"device": str(dev), "device_name": device_name(dev), "precision": current_precision()}


def resolve_precision(spec: str | None, dev: torch.device | str | None = None) -> str:
    """``spec`` checked against :data:`PRECISIONS` and the device (bf16 needs a CPU, or a GPU that supports it)."""
    p = (spec or "fp32").strip().lower()
    if p not in PRECISIONS:
        raise FaceveilDeviceError(f"unknown precision {spec!r}; use one of {', '.join(PRECISIONS)}")
    dev = resolve_device(dev) if dev is not None else current_device()
    if p == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FaceveilDeviceError(f"--precision bf16: {torch.cuda.get_device_name(dev)} has no bfloat16 support")
    if p == "bf16" and dev.type == "mps":
        raise FaceveilDeviceError("--precision bf16 is not supported on MPS here; use fp32")
    return p


def use_precision(spec: str) -> str:
    """Check ``spec`` and make it this process's precision (and its child processes')."""
    p = resolve_precision(spec)
    os.environ[PRECISION_ENV] = p
    return p


def current_precision() -> str:
    """This process's precision (``FACEVEIL_PRECISION``; default fp32). Only the name is checked here: it is read
    by every cache key (:func:`faceveil.config.config_hash`), and :func:`use_precision` has checked it against the
    device when it was set."""
    p = (os.environ.get(PRECISION_ENV) or "fp32").strip().lower()
    if p not in PRECISIONS:
        raise FaceveilDeviceError(f"{PRECISION_ENV}={p!r}: unknown precision; use one of {', '.join(PRECISIONS)}")
    return p


def autocast(dev: torch.device | str | None = None) -> AbstractContextManager:
    """The forward-pass context of this process's precision on ``dev`` (default: the current device):
    ``torch.autocast(dev, bfloat16)`` under bf16, a no-op under fp32."""
    if current_precision() == "fp32":
        return nullcontext()
    dev = torch.device(dev) if dev is not None else current_device()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def module_device(m: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return torch.device("cpu")


def on_device(m: nn.Module) -> nn.Module:
    """``m`` moved to this process's device (a no-op on the CPU)."""
    dev = current_device()
    return m if dev.type == "cpu" else m.to(dev)
