"""FaceObfuscator's channel importance (Section 4.2.2, Algorithm 3, Appendix A).

An auxiliary recognition network reads the self-normalised block-DCT channels through a learnable
weight alpha_i per channel (``x_i * alpha_i``) and is trained briefly (distillation to the frozen
dlib ResNet's clean embeddings, plus an L1 penalty on alpha that makes unimportant channels give
up their weight). Channels are ranked by |alpha|; the least important are removed and the
network is retrained on the rest, until 64, 16, 8, 4, 2, 1 channels are left. At every stage we
measure the auxiliary network's LFW accuracy and the COS of a ``dn`` reconstruction attack
trained on the kept (clean, deletion-only) channels — the shape of the paper's Fig. 5/8.

CPU budget: each stage trains for ``steps`` batches of 32 (quick: 150, full: 1,000; at most
``seconds``: 300 / 2,400) on public faces; accuracies are on the profile's LFW pairs (full: all 6,000).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from faceveil.bench.build import bench_system, lfw_utility
from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute
from faceveil.context import RunContext
from faceveil.data.align import to_tensor
from faceveil.data.datasets import public_chips
from faceveil.defenses import get_defense
from faceveil.defenses.faceobfuscator import CHANNEL_NAMES, ZIGZAG
from faceveil.models.students import StudentNet
from faceveil.storage import ensure_dir, save_figure_atomic, write_json_atomic
from faceveil.train.distill import distill_loss, teacher_embeddings

STAGES = (64, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class ChannelBudget:
    steps: int
    seconds: float
    train_images: int
    per_fold: int | None
    attack_profile: str
    attack_steps: int | None = None  # overrides of the attack profile (tests)
    attack_images: int | None = None
    attack_pairs: int | None = None
    attack_seconds: float | None = None  # the attack profile's wall-time cap (quick: 900 s) would cut the 64-channel dn
    l1: float = 1e-3
    batch_size: int = 32
    lr: float = 2e-3


CHANNEL_BUDGETS = {
    "ci": ChannelBudget(30, 20, 512, 5, "ci"),
    "quick": ChannelBudget(150, 300, 4000, 30, "ci"),
    "full": ChannelBudget(1000, 2400, 13566, None, "quick", attack_seconds=7200),
}


class GatedStudent(nn.Module):
    """Algorithm 3's auxiliary network: learnable per-channel weights alpha, then a compact
    IR-ResNet student producing a 128-D embedding."""

    def __init__(self, n_channels: int, width: int = 16) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(n_channels))
        self.net = StudentNet(in_ch=n_channels, width=width, input_size=112)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.alpha.view(1, -1, 1, 1))


def train_gated(kept: list[int], chips: np.ndarray, targets: tuple[Tensor, Tensor], budget: ChannelBudget, seed: int,
                progress: bool = True) -> GatedStudent:
    """Train the auxiliary network on the ``kept`` channels (deletion only, self-normalised)."""
    d = get_defense("faceobfuscator", channels=",".join(CHANNEL_NAMES[i] for i in kept), obfuscate=False)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = GatedStudent(len(kept))
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=5e-4)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=budget.steps, desc=f"aux net on {len(kept)} channels", disable=not progress, leave=False)
    for _ in range(budget.steps):
        if time.perf_counter() - t0 > budget.seconds:
            break
        idx = torch.randint(0, len(chips), (budget.batch_size,), generator=g)
        flip = torch.rand(len(idx), generator=g) < 0.5
        c = chips[idx.numpy()]
        c = np.where(flip.numpy()[:, None, None, None], c[:, :, ::-1], c)
        with torch.no_grad():
            x = d.protect(to_tensor(c))
        t = torch.where(flip[:, None], targets[1][idx], targets[0][idx])
        loss = distill_loss(model(x), t, 1.0) + budget.l1 * model.alpha.abs().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def importance_heatmap(alpha: np.ndarray, path: Path) -> Path:
    """8x8 heat map of |alpha| laid out by DCT frequency (u, v)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.zeros((8, 8))
    for k, (u, v) in enumerate(ZIGZAG):
        grid[u, v] = abs(alpha[k])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(grid, cmap="viridis")
    for u in range(8):
        for v in range(8):
            ax.text(v, u, CHANNEL_NAMES[ZIGZAG.index((u, v))], ha="center", va="center", fontsize=5, color="w")
    ax.set_xlabel("horizontal frequency v")
    ax.set_ylabel("vertical frequency u")
    ax.set_title("channel importance |α|")
    fig.colorbar(im)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


def channel_importance(profile: str = "quick", out_dir: Path = Path("results/channels"), data=None, seed: int = 0,
                       progress: bool = True) -> dict:
    """Rank the 64 channels, then remove iteratively (64 -> 16 -> 8 -> 4 -> 2 -> 1), measuring the
    auxiliary network's LFW accuracy and a dn attack's COS at each stage."""
    from faceveil.attacks.base import ThreatModel, profile_budget
    from faceveil.bench.privacy import run_attack
    from faceveil.data.datasets import LFW
    from faceveil.models import deployed_recognizer

    budget = CHANNEL_BUDGETS[profile]
    out_dir = Path(out_dir)
    ensure_dir(out_dir)
    teacher = deployed_recognizer()
    chips = public_chips(data, teacher.crop, budget.train_images, seed, progress)
    targets = teacher_embeddings(teacher, chips, progress)
    lfw = LFW(data)
    over = {k: v for k, v in (("max_steps", budget.attack_steps), ("train_images", budget.attack_images),
                              ("max_seconds", budget.attack_seconds)) if v is not None}
    attack_budget = profile_budget(budget.attack_profile, **over)
    kept = list(range(64))
    stages = []
    first_alpha = None
    for n in STAGES:
        if len(kept) > n:  # drop the least important by the previous stage's |alpha|
            order = np.argsort(-np.abs(stages[-1]["alpha"]))
            kept = [stages[-1]["kept"][i] for i in sorted(order[:n])]
        names = ",".join(CHANNEL_NAMES[i] for i in kept)

        d = get_defense("faceobfuscator", channels=names, obfuscate=False)

        def aux(kept=kept, d=d) -> dict:
            model = train_gated(kept, chips, targets, budget, seed, progress)
            system = bench_system(d, "frozen", data=data, model=model, metric="cosine")
            u = lfw_utility(system, lfw, per_fold=budget.per_fold)
            return {"alpha": model.alpha.detach().clone(), "acc": float(u["acc_mean"]), "acc_std": float(u["acc_std"])}

        # the auxiliary network of every stage is cached, and so is the dn attacker (harness): a full
        # run is hours, a stopped one resumes where it was
        key = config_hash(kept, {k: v for k, v in budget.__dict__.items() if not k.startswith("attack")}, seed,
                          str(data_dir(data)), "channel-aux-v1")
        st = load_or_compute(cache_dir("channels") / f"aux-{n}-{key}.pt", aux)
        r = run_attack(d, "dn", ThreatModel(), RunContext(budget.attack_profile, seed, data, progress=progress),
                       budget=attack_budget, eval_pairs_n=budget.attack_pairs)
        m = r["metrics"]["reconstruction"]
        alpha = st["alpha"].numpy().copy()
        if first_alpha is None:
            first_alpha = alpha
        stages.append({"n": n, "kept": kept, "names": names, "alpha": alpha, "acc": float(st["acc"]),
                       "acc_std": float(st["acc_std"]), "cos": m["COS"], "ssim": m["SSIM"], "srra_pair": m["SRRA_pair"],
                       "attack_steps": r["train_log"]["steps"]})
    ranking = [CHANNEL_NAMES[i] for i in np.argsort(-np.abs(first_alpha))]
    heat = importance_heatmap(first_alpha, out_dir / "channel_importance.png")
    curve = _curve(stages, out_dir / "channels_curve.png")
    result = {
        "profile": profile, "budget": budget.__dict__, "ranking": ranking,
        "ac01_ac10_top2": set(ranking[:2]) == {"AC01", "AC10"},
        "ac01_ac10_rank": [ranking.index("AC01") + 1, ranking.index("AC10") + 1],
        "stages": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in stages],
        "heatmap": str(heat), "curve": str(curve),
    }
    write_json_atomic(out_dir / "channels.json", result, indent=2)
    return result


def _curve(stages: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["n"] for s in stages]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(ns)), [100 * s["acc"] for s in stages], "o-", label="aux-net LFW accuracy %")
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_xlabel("channels kept")
    ax.set_ylabel("accuracy %")
    ax2 = ax.twinx()
    ax2.plot(range(len(ns)), [s["cos"] for s in stages], "s--", color="C1", label="dn reconstruction COS")
    ax2.set_ylabel("COS")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def format_channels(result: dict) -> str:
    lines = ["channel ranking by |alpha| (most important first): " + ", ".join(result["ranking"][:16]) + ", ...",
             f"AC01/AC10 ranks: {result['ac01_ac10_rank']} (top-2: {result['ac01_ac10_top2']})",
             f"{'kept':>5} {'LFW acc %':>10} {'dn SSIM':>8} {'dn COS':>8} {'SRRA pair':>9}  channels"]
    for s in result["stages"]:
        names = s["names"] if s["n"] <= 16 else "all 64"
        lines.append(f"{s['n']:>5} {100 * s['acc']:>10.2f} {s['ssim']:>8.3f} {s['cos']:>8.3f} {100 * s['srra_pair']:>8.1f}%  {names}")
    return "\n".join(lines)
