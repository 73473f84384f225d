"""Re-identification attacks on obfuscated faces (DeepBlur's Table 2 protocol).

A closed-set identification task: ``n_ids`` identities with ``per_id`` images each, split per
identity into train / validation / test (the paper: CelebA, 100 identities x 10 images, 7/1/2).
Three threat scenarios (Li & Choi, Section 4.3, after McPherson et al. 2016):

- **T1**: the attacker trains on ORIGINAL images and tests OBFUSCATED ones;
- **T2**: trains on OBFUSCATED images (with labels) and tests ORIGINALS;
- **T3**: trains on OBFUSCATED images and tests other OBFUSCATED images.

Attackers:

- ``vgg`` and ``resnet18``: classifiers trained from scratch on the train split at 64x64 (CPU
  budget: :class:`ReidBudget`), the epoch with the best validation top-1 kept;
- embedding attackers, the "commercial-grade" stand-in for Face++ / Azure: a pretrained recogniser
  (dlib ResNet, faceres, ...) embeds the images and a nearest-class-centroid (cosine) or a linear
  (multinomial logistic regression) classifier is fit on the train-split embeddings.

Scores are top-1 and top-5 accuracy on the test split (chance = 1/n_ids, 5/n_ids).

Why a module of functions and not a registered :class:`~faceveil.attacks.base.Attack`: the
registry's attacks reconstruct faces from leaked data (``attack(protected) -> images``) and are
judged by the reconstruction harness; re-identification is a classification protocol with its own
splits and scenarios and outputs accuracies, not images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCENARIOS = ("T1", "T2", "T3")
CNN_ARCHS = ("vgg", "resnet18")

# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


@dataclass
class ReidSplit:
    """Indices (into a dataset) of the chosen images and their train / val / test split; ``labels``
    are re-numbered 0..n_ids-1 (per chosen image)."""

    index: np.ndarray  # dataset indices of the chosen images
    labels: np.ndarray  # 0..n_ids-1 per chosen image
    train: np.ndarray  # positions into ``index``
    val: np.ndarray
    test: np.ndarray

    @property
    def n_ids(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def make_split(labels: np.ndarray, n_ids: int, per_id: int, split: tuple[int, int, int] = (7, 1, 2), seed: int = 0) -> ReidSplit:
    """Pick ``n_ids`` identities with at least ``per_id`` images and ``per_id`` images of each (seeded),
    split per identity into ``split`` = (train, val, test) counts summing to ``per_id``.

    Nested: the identities are the first ``n_ids`` of one seeded permutation of the eligible ones, and
    each identity's images (and their split) come from a generator seeded by ``(seed, identity)``, so
    a smaller subset (same ``per_id``, ``split`` and seed) is exactly a prefix-of-identities of a
    larger one and per-identity caches are shared between them."""
    if sum(split) != per_id or min(split) < 0 or split[0] < 1 or split[2] < 1:
        raise ValueError(f"split {split} must have train >= 1 and test >= 1 and sum to per_id={per_id}")
    labels = np.asarray(labels)
    ids, counts = np.unique(labels, return_counts=True)
    eligible = ids[counts >= per_id]
    if len(eligible) < n_ids:
        raise ValueError(f"only {len(eligible)} identities have >= {per_id} images; asked for {n_ids}")
    order = np.random.default_rng(seed).permutation(eligible)
    chosen = order[:n_ids]  # label k = the k-th identity of the permutation
    index, lab, tr, va, te = [], [], [], [], []
    for k, ident in enumerate(chosen):
        rng = np.random.default_rng([seed, int(ident)])
        imgs = rng.permutation(np.flatnonzero(labels == ident))[:per_id]
        base = len(index)
        index += imgs.tolist()
        lab += [k] * per_id
        pos = base + np.arange(per_id)
        tr += pos[: split[0]].tolist()
        va += pos[split[0] : split[0] + split[1]].tolist()
        te += pos[split[0] + split[1] :].tolist()
    return ReidSplit(np.array(index), np.array(lab), np.array(tr), np.array(va), np.array(te))


def scenario_data(scenario: str, original: Tensor, obfuscated: Tensor, split: ReidSplit) -> tuple[Tensor, Tensor, Tensor]:
    """(train, val, test) inputs of a scenario: T1 trains/validates on originals and tests
    obfuscated; T2 trains/validates on obfuscated and tests originals; T3 all obfuscated."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    train_src = original if scenario == "T1" else obfuscated
    test_src = original if scenario == "T2" else obfuscated
    return train_src[split.train], train_src[split.val], test_src[split.test]


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def topk_accuracy(scores: Tensor, labels: Tensor | np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean()) if len(labels) else float("nan")


# ---------------------------------------------------------------------------------------------
# Classifiers trained from scratch
# ---------------------------------------------------------------------------------------------


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGNet(nn.Module):
    """VGG-style classifier for 64x64 faces: 4 stages of two 3x3 conv-BN-ReLU + 2x2 max-pool
    (widths w, 2w, 4w, 8w), global average pooling, dropout, linear."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in (width, 2 * width, 4 * width, 8 * width):
            layers += _cbr(cin, c) + _cbr(c, c) + [nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(cin, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016: [2,2,2,2] basic blocks) for 64x64 inputs: a 3x3 stem without
    max-pool, widths w, 2w, 4w, 8w (w = 64 is the original; smaller on CPU)."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_cbr(3, width))
        blocks: list[nn.Module] = []
        cin = width
        for i, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def make_cnn(arch: str, n_classes: int, width: int = 32) -> nn.Module:
    if arch == "vgg":
        return VGGNet(n_classes, width)
    if arch == "resnet18":
        return ResNet18(n_classes, width)
    raise ValueError(f"arch must be one of {', '.join(CNN_ARCHS)}, got {arch!r}")


@dataclass(frozen=True)
class ReidBudget:
    """CPU budget of a from-scratch classifier (stops at whichever of epochs / seconds comes first)."""

    epochs: int = 60
    max_seconds: float = 120.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    width: int = 32
    size: int = 64
    seed: int = 0


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def _augment(x: Tensor, g: torch.Generator, pad: int = 4) -> Tensor:
    """Random horizontal flips and random crops of +-``pad`` pixels (reflect padding)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    s = x.shape[-1]
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    return xp[..., dy : dy + s, dx : dx + s]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, size: int = 64, batch_size: int = 128) -> Tensor:
    """Class scores (logits) of images ``x`` in [0,1]."""
    model.eval()
    return torch.cat([model(_resize(x[s : s + batch_size], size)) for s in range(0, len(x), batch_size)])


def train_cnn(arch: str, x_train: Tensor, y_train: np.ndarray, x_val: Tensor, y_val: np.ndarray, n_classes: int,
              budget: ReidBudget = ReidBudget(), progress: bool = False) -> tuple[nn.Module, dict]:
    """Train a classifier from scratch (AdamW, cosine schedule, flips and crops); keep the weights of
    the epoch with the best validation top-1 (ties: lower validation loss)."""
    from tqdm import tqdm

    torch.manual_seed(budget.seed)
    g = torch.Generator().manual_seed(budget.seed)
    model = make_cnn(arch, n_classes, budget.width)
    xt, xv = _resize(x_train, budget.size), _resize(x_val, budget.size)
    yt, yv = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_val, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget.epochs)
    best = (-1.0, float("inf"))
    best_state = None
    t0 = time.perf_counter()
    log: dict = {"epochs": 0, "best_epoch": -1, "val_top1": [], "seconds": 0.0}
    for epoch in tqdm(range(budget.epochs), desc=f"training {arch}", disable=not progress, leave=False):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(perm), budget.batch_size):
            idx = perm[s : s + budget.batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(_augment(xt[idx], g)), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        scores = predict(model, xv, budget.size)
        acc = topk_accuracy(scores, yv, 1)
        vloss = float(F.cross_entropy(scores, yv))
        log["val_top1"].append(acc)
        log["epochs"] = epoch + 1
        if (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss)
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            log["best_epoch"] = epoch
        if time.perf_counter() - t0 > budget.max_seconds:
            break
    log["seconds"] = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), log


# ---------------------------------------------------------------------------------------------
# Embedding attackers (the "commercial" stand-in)
# ---------------------------------------------------------------------------------------------

EMBEDDING_CLASSIFIERS = ("centroid", "linear")


def fit_embedding_classifier(emb: Tensor, y: np.ndarray, n_classes: int, kind: str = "centroid",
                             weight_decay: float = 1e-3) -> Callable[[Tensor], Tensor]:
    """A classifier on L2-normalised embeddings: ``centroid`` scores classes by cosine similarity
    to the class means; ``linear`` is multinomial logistic regression (full-batch L-BFGS, L2
    penalty ``weight_decay``). Returns ``scores(emb) -> [N, n_classes]``."""
    e = F.normalize(emb.float(), dim=1)
    yt = torch.as_tensor(y, dtype=torch.long)
    if kind == "centroid":
        cent = torch.zeros(n_classes, e.shape[1]).index_add_(0, yt, e)
        cent = F.normalize(cent, dim=1)
        return lambda q: F.normalize(q.float(), dim=1) @ cent.T
    if kind == "linear":
        lin = nn.Linear(e.shape[1], n_classes)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        scale = 10.0  # logit temperature for unit-norm inputs
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(lin(scale * e), yt) + weight_decay * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        lin.eval()

        def scores(q: Tensor) -> Tensor:
            with torch.no_grad():
                return lin(scale * F.normalize(q.float(), dim=1))

        return scores
    raise ValueError(f"kind must be one of {', '.join(EMBEDDING_CLASSIFIERS)}, got {kind!r}")


def embedding_attack(emb_original: Tensor, emb_obfuscated: Tensor, split: ReidSplit, scenario: str,
                     kind: str = "centroid") -> dict[str, float]:
    """Top-1 / top-5 of an embedding attacker under a scenario (embeddings of every chosen image)."""
    tr, _, te = scenario_data(scenario, emb_original, emb_obfuscated, split)
    clf = fit_embedding_classifier(tr, split.labels[split.train], split.n_ids, kind)
    s = clf(te)
    y = split.labels[split.test]
    return {"top1": topk_accuracy(s, y, 1), "top5": topk_accuracy(s, y, 5)}


def cnn_attack(arch: str, original: Tensor, obfuscated: Tensor, split: ReidSplit, scenario: str,
               budget: ReidBudget = ReidBudget(), model: nn.Module | None = None) -> tuple[dict[str, float], nn.Module, dict]:
    """Top-1 / top-5 of a from-scratch classifier under a scenario. Pass ``model`` to reuse one
    already trained on the same training data (T2 and T3 share the model trained on obfuscated
    images; T1 models trained on originals serve every defense)."""
    tr, va, te = scenario_data(scenario, original, obfuscated, split)
    log: dict = {}
    if model is None:
        model, log = train_cnn(arch, tr, split.labels[split.train], va, split.labels[split.val], split.n_ids, budget)
    s = predict(model, te, budget.size)
    y = split.labels[split.test]
    return {"top1": topk_accuracy(s, y, 1), "top5": topk_accuracy(s, y, 5)}, model, log


def budget_dict(b: ReidBudget) -> dict:
    return asdict(b)
