"""Latent search in a generator's latent space, shared by DeepBlur's inversion (Li & Choi 2021, Sec. 3.2)
and the GAN-prior template-inversion attacks (:mod:`faceveil.attacks.ganinv`; Vendrow 2021, Dong et al. 2022,
Shahreza & Marcel 2023): minimise a per-face loss over latents from a starting point with L-BFGS or a
first-order optimiser, optionally projecting the latents back onto a constraint set after every step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

OPTIMIZERS = ("lbfgs", "adam", "adagrad", "sgd")
#: step sizes per optimiser (relative-error loss; latents of scale ~1); tuned on LFW chips (bench/deepblur.py)
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.05, "adagrad": 0.2, "sgd": 20.0}


@dataclass
class InversionLog:
    """Per-evaluation trace of latent searches (for Fig. 7). One run per optimisation (one face for
    L-BFGS, one chunk for the first-order methods): the loss summed over the run's faces, the
    optimiser iteration each evaluation belongs to, and seconds since the run started."""

    runs: list[dict[str, list[float]]] = field(default_factory=list)
    faces: int = 0

    def start(self, n_faces: int) -> dict[str, list[float]]:
        run: dict[str, list[float]] = {"loss": [], "iteration": [], "seconds": [], "faces": [float(n_faces)]}
        self.runs.append(run)
        self.faces += n_faces
        return run

    @property
    def evaluations(self) -> int:
        return sum(len(r["loss"]) for r in self.runs)

    def per_iteration(self) -> list[float]:
        """Mean per-face loss at the end of each iteration (best seen so far; iteration 0 = the
        starting point), averaged over runs."""
        curves = []
        for r in self.runs:
            out: dict[int, float] = {}
            best = math.inf
            for it, loss in zip(r["iteration"], r["loss"], strict=True):
                best = min(best, loss / r["faces"][0])
                out[int(it)] = best
            curve, last = [], math.inf
            for k in range(max(out) + 1):
                last = out.get(k, last)
                curve.append(last)
            curves.append(curve)
        n = min(len(c) for c in curves) if curves else 0
        return [sum(c[k] for c in curves) / len(curves) for k in range(n)]


def search_latents(loss_fn: Callable[[Tensor], Tensor], w0: Tensor, optimizer: str, steps: int, lr: float,
                   log: InversionLog | None = None, project: Callable[[Tensor], None] | None = None) -> Tensor:
    """Minimise ``loss_fn`` (latents ``[B,*shape]`` -> per-face losses ``[B]``) over latents from ``w0``;
    returns the final latents.

    L-BFGS: ``steps`` iterations (history 10, strong-Wolfe line search, several evaluations each);
    Adam / AdaGrad / SGD (momentum 0.9): ``steps`` gradient steps, each followed by ``project(w)`` (in
    place, no gradient; e.g. back onto the sphere of typical latents) when given (first-order only)."""
    if project is not None and optimizer == "lbfgs":
        raise ValueError("search_latents: a projection needs a first-order optimiser (L-BFGS's line search assumes none)")
    w = w0.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    run = log.start(len(w)) if log is not None else None
    if steps == 0:
        return w.detach()
    it = [0]

    def evaluate() -> Tensor:
        loss = loss_fn(w).sum()
        if run is not None:
            run["loss"].append(loss.item())
            run["iteration"].append(float(it[0]))
            run["seconds"].append(time.perf_counter() - t0)
        return loss

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([w], lr=lr, max_iter=steps, max_eval=steps * 4, history_size=10,
                                tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            it[0] = int(opt.state[w].get("n_iter", 0))
            loss = evaluate()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach()
    if optimizer == "adam":
        opt = torch.optim.Adam([w], lr=lr)
    elif optimizer == "adagrad":
        opt = torch.optim.Adagrad([w], lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    for i in range(steps):
        it[0] = i
        opt.zero_grad(set_to_none=True)
        evaluate().backward()
        opt.step()
        if project is not None:
            with torch.no_grad():
                project(w)
    return w.detach()
