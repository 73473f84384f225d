"""``whitebox``: optimisation-based inversion of a known differentiable map (the white-box
attacker of PMT, Pu et al., "Facial data minimization: shallow model as your privacy filter",
eqs. 2-4; the feature-inversion objective of Mahendran & Vedaldi, CVPR 2015):

    x_hat = argmin_x  || E(x) - z ||_2  +  lambda * TV(x),   x in [0,1]^{3 x S x S}

with ``E`` the protection map the attacker knows (e.g. the client part of a split recogniser),
``z`` the leaked representation and the anisotropic total variation
``TV(x) = mean |x[:, i+1, j] - x[:, i, j]| + mean |x[:, i, j+1] - x[:, i, j]|``.

Every sample of a batch is optimised independently (the objective is a sum over samples) from
the same start ``init`` (a mean face; default mid-grey), with Adam or signed-gradient steps
(``method``), clipping to [0,1] after each step. ``trace`` holds the per-sample objective at
every step (``[steps + 1, N]``, the first row at ``init``).

The data term is the plain (unnormalised) Euclidean distance, so lambda depends on the scale of
E's output. For dlib's ``res1`` features ``||E(grey) - z||`` is about 150 and TV of a 64x64 face
about 0.1: the default lambda = 10 is a mild smoothness prior there (it matters for deeper, less
invertible layers, e.g. ``res8``, where it keeps the optimum image-like).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.attacks.base import OptimizationAttack, register_attack
from faceveil.errors import FaceveilDataError

METHODS = ("adam", "sign")


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV per sample: mean absolute vertical + horizontal neighbour differences."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dv + dh


@register_attack("whitebox")
class WhiteBox(OptimizationAttack):
    """White-box optimisation attack (module docstring).

    ``forward``: E, images ``[B,3,s,s]`` in [0,1] -> protected representation (gradients must
    reach the input; put modules in eval mode first); ``input_size``: the side s that E expects
    (images of ``target_size`` are resized bilinearly, differentiably, before E; None = no resize);
    ``init``: the start image ``[3,S,S]`` in [0,1] (resized if another size); ``steps``, ``lr``
    (Adam step size, or the per-step change for ``method="sign"``), ``tv_weight`` (lambda)."""

    needs = frozenset({"forward_map"})
    NOT_CONFIG = ("forward",)

    def __init__(self, *, forward: Callable[[Tensor], Tensor] | None = None, input_size: int | None = None,
                 target_size: int = 112, init: Tensor | None = None, steps: int = 200, lr: float = 0.03,
                 tv_weight: float = 10.0, method: str = "adam", seed: int = 0) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if steps < 1 or lr <= 0 or tv_weight < 0:
            raise ValueError(f"need steps >= 1, lr > 0, tv_weight >= 0; got {steps}, {lr}, {tv_weight}")
        if init is not None and (init.ndim != 3 or init.shape[0] != 3):
            raise FaceveilDataError(f"whitebox: init must be a [3,S,S] image, got {list(init.shape)}")
        self.forward, self.input_size, self.target_size = forward, input_size, target_size
        self.steps, self.lr, self.tv_weight, self.method, self.seed = steps, lr, tv_weight, method, seed
        start = init.detach().float().clamp(0, 1) if init is not None else torch.full((3, target_size, target_size), 0.5)
        if start.shape[-2:] != (target_size, target_size):
            start = F.interpolate(start[None], size=(target_size, target_size), mode="bilinear", align_corners=False,
                                  antialias=start.shape[-1] > target_size)[0]
        self.init = start
        self.trace: Tensor | None = None
        self._out_shape: tuple[int, ...] | None = None

    def config_value(self, param: str):
        if param == "init":
            return "mid-grey" if bool((self.init == 0.5).all()) else "given"
        return super().config_value(param)

    # --- the objective ----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """E applied to target-size images (resized to ``input_size`` first)."""
        if self.forward is None:
            raise RuntimeError("whitebox: give the differentiable map as forward=...")
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        return self.forward(x)

    def objective(self, x: Tensor, z: Tensor) -> Tensor:
        """Per-sample ``||E(x) - z||_2 + lambda TV(x)`` (PMT eqs. 2-4)."""
        d = (self.encode(x) - z).flatten(1).norm(dim=1)
        return d + self.tv_weight * total_variation(x) if self.tv_weight > 0 else d

    def output_shape(self) -> tuple[int, ...]:
        if self._out_shape is None:
            with torch.no_grad():
                self._out_shape = tuple(self.encode(self.init[None]).shape[1:])
        return self._out_shape

    # --- the attack -------------------------------------------------------------------------------
    def _check(self, protected: Tensor) -> None:
        if not isinstance(protected, Tensor) or not torch.is_floating_point(protected):
            raise FaceveilDataError(f"whitebox: protected data must be a float tensor, got "
                                    f"{getattr(protected, 'dtype', type(protected).__name__)}")
        want = self.output_shape()
        if tuple(protected.shape[1:]) != want:
            raise FaceveilDataError(f"whitebox: E outputs [B,{','.join(map(str, want))}], got protected data "
                                    f"{list(protected.shape)}")
        if not torch.isfinite(protected).all():
            raise FaceveilDataError("whitebox: protected data contains NaN or infinite values")

    def invert(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Optimise one batch; returns (images, per-step objective ``[steps+1, B]``)."""
        x = self.init.expand(len(z), -1, -1, -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr) if self.method == "adam" else None
        trace = []
        for step in range(self.steps + 1):
            with torch.enable_grad():
                obj = self.objective(x, z)
                trace.append(obj.detach())
                if step == self.steps:
                    break
                (g,) = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                if opt is not None:
                    x.grad = g
                    opt.step()
                else:
                    x.sub_(self.lr * g.sign())
                x.clamp_(0, 1)
        return x.detach(), torch.stack(trace)

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        self._check(protected)
        outs, traces = [], []
        for s in range(0, len(protected), batch_size):
            x, tr = self.invert(protected[s : s + batch_size].float())
            outs.append(x)
            traces.append(tr)
        self.trace = torch.cat(traces, 1) if traces else None
        return torch.cat(outs) if outs else torch.empty(0, 3, self.target_size, self.target_size)
