"""The ``ridge`` floor: closed-form decoding on constructed data with known answers (the real-face test is in
tests/bench/test_sar.py)."""

from __future__ import annotations

import pytest
import torch

from faceveil.attacks import Budget, PairSource, get_attack
from faceveil.attacks.ridge import LAM_GRID
from faceveil.errors import FaceveilDataError

S = 16  # 3x16x16 = 768 output values


def linear_data(n: int, d: int, noise: float, seed: int = 0, signal: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * S * S, generator=g) * 0.05
    x = torch.randn(n, d, generator=g)
    y = 0.5 + signal * (x @ a) + noise * torch.randn(n, 3 * S * S, generator=g)
    return x, y.reshape(n, 3, S, S), a


def fit(x, y, **kw):
    budget = Budget(epochs=5, batch_size=64, target_size=S)
    return get_attack("ridge", target_size=S, **kw).fit(PairSource(y, protected=x, seed=1), budget, progress=False)


def test_recovers_a_linear_map_with_a_small_penalty():
    x, y, a = linear_data(3000, 32, noise=0.01)
    r = fit(x, y)
    x_new = torch.randn(200, 32, generator=torch.Generator().manual_seed(9))
    want = (0.5 + x_new @ a).clamp(0, 1).reshape(200, 3, S, S)
    assert (r.attack(x_new) - want).abs().max() < 0.01
    assert r.log.extra["lam_relative"] <= 1e-2 and r.log.extra["reduction"] == "none"
    assert r.log.epochs == 1 and r.log.steps == r.log.planned_steps == 47  # a deterministic source: one epoch
    assert r.log.extra["train_samples"] + r.log.extra["val_samples"] == 3000 and r.log.extra["val_samples"] == 300


def test_pure_noise_gets_a_large_penalty_and_the_mean_image():
    """Targets independent of the inputs: the held-out error picks a large penalty and the decoder outputs
    about the mean target, not an overfitted map."""
    x, y, _ = linear_data(400, 64, noise=0.1, signal=0.0)
    r = fit(x, y)
    assert r.log.extra["lam_relative"] >= 10
    out = r.attack(torch.randn(50, 64))
    assert (out - 0.5).abs().mean() < 0.02
    # without the validation choice the smallest penalty would overfit: its held-out error is the largest
    val = r.log.extra["val_mse"]
    assert val[0] > min(val) and len(val) == len(LAM_GRID)


def test_large_inputs_are_count_sketched_and_the_decoder_round_trips(tmp_path):
    """Feature-map-like inputs (1,600 values driven by 24 latent factors, as maps of a face are by far fewer
    factors than values): a 256-bucket sketch keeps what a linear decoder needs."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(800, 24, generator=g)
    x = (z @ torch.randn(24, 1600, generator=g) + 0.05 * torch.randn(800, 1600, generator=g)).reshape(800, 4, 20, 20)
    y = (0.5 + 0.05 * z @ torch.randn(24, 3 * S * S, generator=g)).reshape(800, 3, S, S).clamp(0, 1)
    r = fit(x, y, max_dim=256)
    assert r.log.extra["reduction"] == "CountSketch 1600 -> 256" and r.net.weight.shape == (256, 3 * S * S)
    out = r.attack(x[:50])
    assert out.shape == (50, 3, S, S) and out.dtype == torch.float32 and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert ((out - y[:50]) ** 2).mean() < 0.05 * y.var()  # explains the variance through the sketch
    r.save(tmp_path / "ridge.pt")
    again = get_attack("ridge", target_size=S, max_dim=256).load(tmp_path / "ridge.pt")
    assert torch.equal(again.attack(x[:50]), out)
    with pytest.raises(FaceveilDataError):
        r.attack(torch.randn(2, 4, 20, 21))


def test_a_stochastic_source_is_streamed_for_several_epochs():
    x, y, _ = linear_data(256, 16, noise=0.0)

    def redraw(inp: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return inp + 0.1 * torch.randn(inp.shape, generator=g)

    r = get_attack("ridge", target_size=S, redraw_epochs=2).fit(
        PairSource(y, inputs=x, redraw=redraw, seed=0), Budget(epochs=10, batch_size=64, target_size=S), progress=False)
    assert r.log.epochs == 2 and r.log.steps == 8 and r.log.extra["train_samples"] + r.log.extra["val_samples"] == 512


def test_bad_configuration_and_targets():
    with pytest.raises(ValueError):
        get_attack("ridge", val_fraction=1.0)
    with pytest.raises(ValueError):
        get_attack("ridge", max_dim=0)
    x, y, _ = linear_data(100, 8, noise=0.0)
    with pytest.raises(FaceveilDataError, match="target_size"):
        get_attack("ridge", target_size=32).fit(PairSource(y, protected=x), Budget(epochs=1, target_size=32),
                                                progress=False)


def test_moments_solve_and_path_equal_the_textbook_ridge_solution():
    """The accumulated moments (in chunks; the held-out rows added for the refit), the in-place centring and the closed-form
    validation path agree with the direct formulas: ``W = (Xc^T Xc + lam I)^-1 Xc^T Yc`` (centred data,
    intercept ``my - mx W``) and the validation MSE of that decoder, in float64."""
    import numpy as np

    from faceveil.attacks import ridge as R

    x, y, _ = linear_data(700, 24, noise=0.2, seed=3)
    x, y = x.double(), y.reshape(len(y), -1).double()
    tr, va = moments_of(R, x[:600], y[:600]), R._Rows()
    va.add(x[600:650], y[600:650])
    va.add(x[650:], y[650:])  # two chunks of rows
    cols = torch.arange(0, y.shape[1], 3)
    xn, yn = x[:600].numpy(), y[:600].numpy()
    mx, my = xn.mean(0), yn.mean(0)
    xc, yc = xn - mx, yn - my
    scale = np.trace(xc.T @ xc) / xc.shape[1]
    grid = (1e-3, 1e-1, 10.0)
    path = R.ridge_path(tr, va, grid, cols)
    for r, got in zip(grid, path, strict=True):
        w = np.linalg.solve(xc.T @ xc + r * scale * np.eye(24), xc.T @ yc)
        pred = (x[600:].numpy() - mx) @ w + my
        want = ((pred - y[600:].numpy())[:, cols.numpy()] ** 2).mean()
        assert got == pytest.approx(want, rel=1e-9)
    both = tr.add_rows(va)
    w, b, lam = R.ridge_solve(both, 0.1)
    xa, ya = x.numpy(), y.numpy()
    xa_c, ya_c = xa - xa.mean(0), ya - ya.mean(0)
    assert lam == pytest.approx(0.1 * np.trace(xa_c.T @ xa_c) / 24, rel=1e-12)
    w_ref = np.linalg.solve(xa_c.T @ xa_c + lam * np.eye(24), xa_c.T @ ya_c)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), ya.mean(0) - xa.mean(0) @ w_ref, rtol=1e-8, atol=1e-12)
    out = torch.zeros(24, y.shape[1], dtype=torch.float32)  # solved by blocks of columns into a float32 weight
    w32, b2, _ = R.ridge_solve(moments_of(R, x, y), 0.1, weight=out, block=100)
    assert w32 is out
    np.testing.assert_allclose(out.numpy(), w_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b2.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def moments_of(R, x: torch.Tensor, y: torch.Tensor):
    m = R._Moments(x.shape[1], y.shape[1])
    for i in range(0, len(x), 250):  # several chunks, the last one flushed by merge_/solve
        m.add(x[i:i + 250], y[i:i + 250])
    m.flush()
    return m
