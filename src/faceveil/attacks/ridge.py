"""``ridge``: the closed-form linear decoder, the floor every learned reconstruction attack must beat.

Template -> pixels by ridge regression (Hoerl & Kennard 1970), the linear baseline of template-inversion
work (Mai et al., TPAMI 2019, compare their decoders with such "shallow" mappings): with inputs ``X``
(flattened, centred) and target images ``Y`` (``[3,S,S]`` flattened, centred),

    W = argmin ||X W - Y||^2 + lam ||W||^2 = (X^T X + lam I)^-1 X^T Y,   image = clamp(x W + b, 0, 1).

- **Fit**: one pass over the attacker's :class:`~faceveil.attacks.base.PairSource` (a deterministic
  defense gives the same pairs every epoch; a stochastic one is streamed for ``redraw_epochs`` epochs,
  each with fresh protection draws, so the decoder sees more samples), accumulating ``n``, ``sum x``,
  ``sum y``, ``X^T X`` and ``X^T Y`` in float64 (batches are gathered into chunks of at least
  1,024 rows before each update: the update of a 2,048 x 12,288 accumulator is memory-bound).
- **Penalty**: a seeded ``val_fraction`` of the training pairs is held out (public faces, never the
  targets). ``lam = r * tr(C) / d`` for ``r`` on a log grid (1e-8 ... 1e2, half a decade apart), so the
  grid does not depend on the scale of the inputs. One eigendecomposition ``C = V diag(s) V^T`` of the
  training covariance gives every grid point's validation error in closed form:
  ``err(g) = c - 2 g.(Q o B)1 + g^T (A o Q Q^T) g`` with ``g = 1/(s + lam)``, ``Q = V^T C_xy``,
  ``A = V^T C_val V``, ``B = V^T C_val,xy`` (on a seeded subset of at most 2,048 output pixels: an unbiased
  estimate of the validation MSE that keeps ``Q Q^T`` cheap at 112 px). The chosen ``r`` is then refit on
  training + validation pairs.
- **Reduction**: inputs of more than ``max_dim`` (2,048) values — feature maps (dlib res1 32x35x35 =
  39,200), FaceObfuscator's 2x112x112 frequency channels — are first reduced by a seeded **CountSketch**
  (feature hashing: each input value is added, with a random sign, to one of ``max_dim`` buckets; Charikar
  et al. 2002, Weinberger et al. 2009; the sparse embedding Clarkson & Woodruff 2013 use to sketch regression
  problems). Why not PCA: exact PCA of a 39,200-D input needs its 39,200^2 covariance (12 GB in float64),
  randomised PCA a second pass over the data through a dense 39,200 x 2,048 basis (~320 MB, ~1 TFLOP per
  pass at the quick profile); a dense Gaussian projection needs that matrix too. CountSketch costs O(D)
  memory and time per sample and preserves inner products in expectation (a Johnson-Lindenstrauss
  embedding), so the decoder is the ridge solution over a random 2,048-D subspace of the input.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceveil.attacks.base import Budget, PairSource, ReconstructionAttack, TrainLog, register_attack
from faceveil.errors import FaceveilDataError

log = logging.getLogger(__name__)

#: relative ridge penalties tried (times the mean eigenvalue of the input covariance)
LAM_GRID = tuple(float(10.0**e) for e in np.arange(-8.0, 2.01, 0.5))
#: batches are gathered into chunks of at least this many rows before updating the accumulators
CHUNK_ROWS = 1024
#: output pixels on which the validation error is estimated (all of them when fewer)
VAL_PIXELS = 2048


class RidgeDecoder(nn.Module):
    """``x -> sketch(flatten(x)) W + b`` reshaped to ``[B,3,S,S]``; every tensor is a buffer (nothing is
    trained by gradient). The CountSketch's buckets and signs come from ``seed`` and the input size."""

    def __init__(self, in_shape: tuple[int, ...], target_size: int, max_dim: int, seed: int) -> None:
        super().__init__()
        self.in_shape, self.target_size = tuple(in_shape), target_size
        self.in_dim = math.prod(in_shape)
        self.dim = min(self.in_dim, max_dim)
        self.sketched = self.in_dim > max_dim
        if self.sketched:
            g = torch.Generator().manual_seed(seed * 104729 + self.in_dim)
            self.register_buffer("bucket", torch.randint(0, self.dim, (self.in_dim,), generator=g))
            self.register_buffer("sign", torch.randint(0, 2, (self.in_dim,), generator=g).float().mul_(2).sub_(1))
        out = 3 * target_size * target_size
        self.register_buffer("weight", torch.zeros(self.dim, out))
        self.register_buffer("bias", torch.zeros(out))

    def features(self, x: Tensor) -> Tensor:
        """The (sketched) input vectors ``[B, dim]`` in the dtype of ``x``."""
        flat = x.reshape(len(x), -1)
        if not self.sketched:
            return flat
        out = torch.zeros(len(x), self.dim, dtype=flat.dtype, device=flat.device)
        return out.index_add_(1, self.bucket, flat * self.sign.to(flat.dtype))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.addmm(self.bias, self.features(x.float()), self.weight)
        return y.reshape(len(x), 3, self.target_size, self.target_size)


class _Rows:
    """Pairs kept as rows (features and targets as given): the chunk buffer of :class:`_Moments`, and the held-out
    validation pairs — a tenth of the samples, far smaller than a second ``d x m`` float64 accumulator (200 MB for
    a 2,048-D input and 64-px targets); the validation path needs their moments on a subset of the pixels only."""

    def __init__(self) -> None:
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []
        self.n = 0

    def add(self, x: Tensor, y: Tensor) -> None:
        if len(x):
            self.x.append(x)
            self.y.append(y)
            self.n += len(x)

    def centred(self, mx: Tensor, my: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """The rows minus the training means, targets on the pixel columns ``cols``, in float64."""
        return torch.cat(self.x).double() - mx, torch.cat([y[:, cols] for y in self.y]).double() - my[cols]


class _Moments:
    """Float64 sums ``n, sum x, sum y, sum y^2 (per pixel), X^T X, X^T Y``, updated by chunks of rows."""

    def __init__(self, d: int, m: int) -> None:
        self.n = 0
        self.sx, self.sy, self.syy = torch.zeros(d, dtype=torch.float64), torch.zeros(m, dtype=torch.float64), \
            torch.zeros(m, dtype=torch.float64)
        self.sxx = torch.zeros(d, d, dtype=torch.float64)
        self.sxy = torch.zeros(d, m, dtype=torch.float64)
        self._chunk = _Rows()

    def add(self, x: Tensor, y: Tensor) -> None:
        self._chunk.add(x, y)
        if self._chunk.n >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._chunk.n:
            return
        x, y = torch.cat(self._chunk.x).double(), torch.cat(self._chunk.y).double()
        self._chunk = _Rows()
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.syy += (y * y).sum(0)
        self.sxx.addmm_(x.T, x)
        self.sxy.addmm_(x.T, y)

    def add_rows(self, rows: _Rows) -> _Moments:
        """Add the held-out ``rows`` to these sums (the refit on training + validation pairs)."""
        for x, y in zip(rows.x, rows.y, strict=True):
            self.add(x, y)
        self.flush()
        return self


def _centre_(sxy: Tensor, sx: Tensor, sy: Tensor, mx: Tensor, my: Tensor, n: int) -> Tensor:
    """``sxy - sx my^T - mx sy^T + n mx my^T`` (a sum of ``x y^T`` over ``n`` rows, centred by the means ``mx``,
    ``my``) in place on ``sxy``: three rank-one updates, where the expression form allocates a ``d x m``
    float64 temporary per term (200 MB each for a 2,048-D input and 64-px targets)."""
    return sxy.addr_(sx, my, alpha=-1).addr_(mx, sy, alpha=-1).addr_(mx, my, alpha=n)


def _covariances(st: _Moments, mx: Tensor, my: Tensor, cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over ``st``'s rows of ``(x-mx)(x-mx)^T``, ``(x-mx)(y-my)^T`` and ``|y-my|^2`` (per pixel), on the
    pixel columns ``cols`` (index tensor)."""
    cxx = _centre_(st.sxx.clone(), st.sx, st.sx, mx, mx, st.n)
    cxy = _centre_(st.sxy[:, cols], st.sx, st.sy[cols], mx, my[cols], st.n)  # indexing copies: st is unchanged
    sy, my_ = st.sy[cols], my[cols]
    cyy = st.syy[cols] - 2 * my_ * sy + st.n * my_ * my_
    return cxx, cxy, cyy


def ridge_path(train: _Moments, val: _Rows, grid: tuple[float, ...], cols: Tensor) -> list[float]:
    """Validation MSE (per pixel value, on ``cols``) of the ridge decoder fitted on ``train`` for each
    relative penalty of ``grid``, from one eigendecomposition (see the module docstring)."""
    mx, my = train.sx / train.n, train.sy / train.n
    cxx, cxy, _ = _covariances(train, mx, my, cols)
    s, v = torch.linalg.eigh(cxx)
    s = s.clamp_min(0)
    q = v.T @ cxy
    xv, yv = val.centred(mx, my, cols)  # the validation rows, centred by the training means
    axx, axy, ayy = xv.T @ xv, xv.T @ yv, (yv * yv).sum(0)
    a, b = v.T @ axx @ v, v.T @ axy
    qb = (q * b).sum(1)
    big = a * (q @ q.T)
    scale = float(s.sum()) / len(s)
    out = []
    for r in grid:
        g = 1.0 / (s + r * scale)
        err = float(ayy.sum()) - 2 * float(g @ qb) + float(g @ big @ g)
        out.append(max(err, 0.0) / (val.n * len(cols)))
    return out


def ridge_solve(st: _Moments, rel: float, weight: Tensor | None = None,
                block: int = 1024) -> tuple[Tensor, Tensor, float]:
    """``(W, b, lam)`` of the ridge decoder on all of ``st``'s rows at relative penalty ``rel``, written into
    ``weight`` (``[d, m]``, any float dtype; a new float64 tensor if None). ``st`` is consumed: its ``d x m``
    cross-moment is centred in place and solved ``block`` pixel columns at a time, so the solve allocates no
    second ``d x m`` float64 array (at 64 px and a 2,048-D input each is 200 MB; the whole-matrix form needed
    three of them beside the accumulator)."""
    mx, my = st.sx / st.n, st.sy / st.n
    cxx = _centre_(st.sxx.clone(), st.sx, st.sx, mx, mx, st.n)
    lam = max(rel * float(torch.diagonal(cxx).sum()) / len(cxx), 1e-300)
    s, v = torch.linalg.eigh(cxx)  # not Cholesky: stable for a rank-deficient C and a tiny penalty alike
    g = (1.0 / (s.clamp_min(0) + lam))[:, None]
    m = st.sxy.shape[1]
    w = torch.empty(len(cxx), m, dtype=torch.float64) if weight is None else weight
    b = torch.empty(m, dtype=torch.float64)
    for j in range(0, m, block):
        cols = slice(j, j + block)
        cxy = _centre_(st.sxy[:, cols], st.sx, st.sy[cols], mx, my[cols], st.n)  # a view: centred in place
        wj = v @ ((v.T @ cxy) * g)
        w[:, cols] = wj
        b[cols] = my[cols] - mx @ wj
    return w, b, lam


@register_attack("ridge")
class Ridge(ReconstructionAttack):
    """Closed-form ridge-regression decoder (module docstring). ``max_dim``: inputs with more values are
    CountSketched to this many; ``val_fraction``: training pairs held out to choose the penalty;
    ``redraw_epochs``: epochs streamed from a stochastic defense's source (one for a deterministic one)."""

    def __init__(self, *, target_size: int = 112, seed: int = 0, max_dim: int = 2048, val_fraction: float = 0.1,
                 redraw_epochs: int = 3) -> None:
        super().__init__(target_size=target_size, loss="l2", seed=seed)
        if max_dim < 1:
            raise ValueError(f"max_dim must be >= 1, got {max_dim}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if redraw_epochs < 1:
            raise ValueError(f"redraw_epochs must be >= 1, got {redraw_epochs}")
        self.max_dim, self.val_fraction, self.redraw_epochs = max_dim, val_fraction, redraw_epochs

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        return RidgeDecoder(in_shape, self.target_size, self.max_dim, self.seed)

    def fit(self, source: PairSource, budget: Budget, progress: bool = True, checkpoint: Path | None = None,
            checkpoint_seconds: float = 300.0) -> Ridge:
        """Accumulate the moments of ``source`` (at most ``budget.max_steps`` batches), choose the penalty on
        the held-out pairs and solve. No checkpoint: the whole fit takes seconds to a minute."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        n = len(source)
        if n < 3:
            raise FaceveilDataError(f"ridge: {n} training pairs; need at least 3 (training and validation)")
        self.in_shape = source.sample_shape()
        net = self.build(self.in_shape)
        assert isinstance(net, RidgeDecoder)
        m = 3 * self.target_size**2
        g = torch.Generator().manual_seed(self.seed * 7907 + 3)
        n_val = min(n - 2, max(1, round(self.val_fraction * n)))
        is_val = torch.zeros(n, dtype=torch.bool)
        is_val[torch.randperm(n, generator=g)[:n_val]] = True
        epochs = min(budget.epochs, self.redraw_epochs) if source.redrawn else 1
        per_epoch = -(-n // budget.batch_size) - (1 if n % budget.batch_size == 1 else 0)  # batches() drops a last 1
        total = epochs * per_epoch
        if budget.max_steps:
            total = min(total, budget.max_steps)
        train, val = _Moments(net.dim, m), _Rows()
        self.log = TrainLog(planned_steps=total, stopped_by="epochs")
        bar = tqdm(total=total, desc="fitting ridge", disable=not progress, unit="batch", leave=False)
        with torch.no_grad():
            for epoch in range(epochs):
                for p, y, idx in source.indexed_batches(epoch, budget.batch_size):
                    if tuple(y.shape[1:]) != (3, self.target_size, self.target_size):
                        raise FaceveilDataError(f"ridge: targets of shape {list(y.shape[1:])}, expected "
                                                f"[3,{self.target_size},{self.target_size}] (target_size)")
                    f = net.features(p.double())
                    yf = y.reshape(len(y), -1)
                    v = is_val[idx]
                    train.add(f[~v], yf[~v])
                    val.add(f[v], yf[v])
                    self.log.steps += 1
                    bar.update()
                    if self.log.steps >= total:
                        break
                self.log.epochs = epoch + 1
                if self.log.steps >= total:
                    self.log.stopped_by = "steps" if total == budget.max_steps else "epochs"
                    break
        bar.close()
        train.flush()
        if train.n < 2 or val.n < 1:
            raise FaceveilDataError(f"ridge: {train.n} training and {val.n} validation samples after "
                                    f"{self.log.steps} batch(es); need at least 2 and 1")
        cols = torch.randperm(m, generator=g)[:VAL_PIXELS].sort().values if m > VAL_PIXELS else torch.arange(m)
        path = ridge_path(train, val, LAM_GRID, cols)
        best = int(np.argmin(path))
        if best in (0, len(LAM_GRID) - 1):
            log.info("ridge: the chosen penalty %.0e is at the edge of the grid", LAM_GRID[best])
        n_train, n_val = train.n, val.n
        _, b, lam = ridge_solve(train.add_rows(val), LAM_GRID[best], weight=net.weight)  # consumes train
        del train, val
        net.bias.copy_(b.float())
        net.eval()
        self.net = net
        self.log.losses = [path[best]]
        self.log.seconds = time.perf_counter() - t0
        self.log.extra = {"lam_relative": LAM_GRID[best], "lam": lam, "lam_grid": list(LAM_GRID), "val_mse": path,
                          "input_dim": net.in_dim, "dim": net.dim,
                          "reduction": f"CountSketch {net.in_dim} -> {net.dim}" if net.sketched else "none",
                          "train_samples": n_train, "val_samples": n_val}
        return self
