"""Cached embeddings of dataset images, per (model, weights, dataset files, alignment)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from faceveil.config import cache_dir, config_hash, write_atomically
from faceveil.data.align import ALIGN_VERSION, to_tensor
from faceveil.data.chips import recrop
from faceveil.data.crop import CropSpec
from faceveil.data.datasets import FaceDataset
from faceveil.models.base import Recognizer
from faceveil.storage import load_cache


def model_fingerprint(model: Recognizer) -> str:
    """Hash of a model's name and weights (so caches never outlive a change of weights)."""
    h = [model.name]
    for k, v in model.state_dict().items():
        # numpy's pairwise sums: the same value whatever the memory layout (fast_layout) and the number of
        # threads (torch's parallel sums were not: a process with OMP_NUM_THREADS=1 got another fingerprint)
        a = v.detach().contiguous().cpu().double().numpy()
        h.append((k, float(a.sum()), float(np.abs(a).sum()), list(v.shape)))
    return config_hash(h, precision=False)


def module_digest(m: torch.nn.Module, length: int = 16) -> str:
    """sha256 of a module's parameters and buffers (keys caches of results computed with it)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:length]


def embed_chips(model: Recognizer, chips: np.ndarray, batch_size: int = 64, progress: bool = False,
                align: CropSpec | None = None) -> torch.Tensor:
    """Embeddings of uint8 chips ``[N,S,S,3]`` (resized to the model's input when needed). ``align``: the
    geometry the chips were aligned with when it is not the model's; they are re-cropped to the model's
    (area outside the chip black), as the attack judges embed chips of another recogniser's geometry."""
    out = []
    for s in tqdm(range(0, len(chips), batch_size), disable=not progress, desc=f"embedding ({model.name})"):
        x = to_tensor(chips[s : s + batch_size])
        if align is not None and align != model.crop:
            x = recrop(x, align, model.crop).clamp(0, 1)
        out.append(model.embed(x, batch_size=batch_size))
    return torch.cat(out) if out else torch.empty(0, model.embedding_dim)


def dataset_embeddings(
    model: Recognizer, ds: FaceDataset, indices: Sequence[int] | None = None, progress: bool = True, flip_tta: bool = False,
    align: CropSpec | None = None,
) -> tuple[torch.Tensor, np.ndarray, float]:
    """Embeddings of ``ds.files[indices]`` on chips aligned for ``model.crop`` (or aligned with ``align``
    and re-cropped to the model's geometry: :func:`embed_chips`).

    Returns (embeddings ``[N,D]``, detection status per image, ms per image of the model forward —
    NaN when loaded from cache). With ``flip_tta`` the embedding is the mean of the image's and its
    mirror image's embeddings (test-time augmentation). Cached in ``FACEVEIL_HOME/embeddings``.
    """
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    sub = ds.subset(idx)
    align = None if align == model.crop else align
    key = config_hash(model_fingerprint(model), sub.name, sub.files, model.crop.key(), ALIGN_VERSION, flip_tta,
                      *([align.key()] if align is not None else []))
    path = cache_dir("embeddings") / f"{model.name}-{sub.name}{'-flip' if flip_tta else ''}-{key}.npz"
    if (cached := load_cache(path, lambda p: load_npz(p, "emb", "status"))) is not None:
        return torch.from_numpy(cached["emb"]), cached["status"], float("nan")
    chips, status = sub.chips(align or model.crop, progress=progress)
    t0 = time.perf_counter()
    emb = embed_chips(model, chips, progress=progress, align=align)
    if flip_tta:
        emb = 0.5 * (emb + embed_chips(model, np.ascontiguousarray(chips[:, :, ::-1]), progress=progress, align=align))
    ms = 1000.0 * (time.perf_counter() - t0) / max(1, len(chips))
    write_atomically(path, lambda p: np.savez(p, emb=emb.numpy(), status=status), checksum=True)
    return emb, status, ms


def load_npz(path, *keys: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file, read into memory (a missing key raises ``KeyError``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in keys}
