"""Template-protection measures of a benchmarked system (ISO/IEC 24745 properties as the biometric template
protection literature measures them; :mod:`faceveil.metrics.protection`, :mod:`faceveil.metrics.unlinkability`).

On LFW ``pairsDevTest.txt`` images (1,549 images of 963 people; at the cheap profiles both images of its first
same-person pairs, up to a cap), through
the system's whole protected path and its server's comparator:

- ``E_A``: templates enrolled in system A (key A, or the defense's per-sample randomness under seed A);
- ``P_A``: probes of the same images in system A (fresh randomness);
- ``E_B``: templates enrolled in system B (another key / another seed: a second application, or system A after
  renewal).

Recognition: FNMR at FMR 1e-3 of ``E_A`` vs ``P_A`` (mated: another image of the subject; non-mated: different
subjects). Unlinkability: D↔sys (Gomez-Barrero et al., IEEE TIFS 2018) of ``E_A`` vs ``E_B`` with the same
protocol. Renewability: the fraction of those mated cross-system comparisons (an old template against the
renewed system's templates of the person) accepted at system A's FMR 1e-3 threshold (0 = a key change revokes
old templates). A defense without a key has only its per-sample randomness to renew with: whatever its server
ignores (e.g. noise it was trained to tolerate) links and keeps matching.
"""

from __future__ import annotations

import numpy as np

from faceveil.bench.build import embed_chips
from faceveil.config import cache_dir, config_hash, load_or_compute
from faceveil.data.datasets import LFW
from faceveil.keys import SecretKey
from faceveil.metrics.protection import fnmr_at_fmr, linkage_scores, renewability, threshold_at_fmr
from faceveil.metrics.unlinkability import unlinkability
from faceveil.models.embed import module_digest
from faceveil.system.core import ProtectedSystem

FMR = 1e-3
#: LFW pairsDevTest images measured per profile (None = all 1,549)
IMAGES = {"ci": 300, "fast": 150, "quick": 600, "full": None}
#: non-mated comparisons scored (drawn without replacement)
MAX_NONMATED = 100_000
VERSION = "protection-v1"


def devtest_images(lfw: LFW, n: int | None) -> np.ndarray:
    """LFW pairsDevTest image ids: both images of its same-person pairs in file order (so every subject taken
    has a mated comparison), up to ``n``; ``None``: every image of the file."""
    p = lfw.pairs("devtest")
    if n is None:
        return np.unique(np.concatenate([p.a, p.b]))
    seen: dict[int, None] = {}
    for a, b in zip(p.a[p.same], p.b[p.same], strict=True):
        if len(seen) + 2 > n:
            break
        seen |= {int(a): None, int(b): None}
    return np.array(sorted(seen), dtype=np.int64)


def second_system(system: ProtectedSystem, seed: int) -> tuple[ProtectedSystem, int]:
    """System B and the research seed of its randomness: the same defense under another key (keyed
    defenses) or the same system drawing under another seed."""
    d = system.defense
    if getattr(d, "needs_key", False):
        other = d.with_key(SecretKey.from_research_seed(1_000 + seed))
        return ProtectedSystem(other, system.model, system.operating_point, system.server_kind, system.metric), seed + 2
    return system, seed + 2


def template_protection(system: ProtectedSystem, lfw: LFW | None = None, seed: int = 0, images: int | None = 600,
                        force: bool = False) -> dict:
    """FNMR@FMR1e-3, D↔sys across two keys/seeds and renewability of ``system`` (module docstring); cached,
    keyed by the defense, the server's weights, the images and the seed."""
    lfw = lfw or LFW()
    d = system.defense
    idx = devtest_images(lfw, images)
    key = config_hash(d.config(), d.recognizer.name, system.server_kind, module_digest(system.model), system.metric, seed,
                      [int(i) for i in idx], str(lfw.base), VERSION)

    def compute() -> dict:
        ds = lfw.dataset()
        chips, _ = ds.subset(idx).chips(d.recognizer.crop, progress=False)
        labels = ds.labels[idx]
        e_a = embed_chips(system, chips, stored=True, seed=seed, salt=41)
        p_a = embed_chips(system, chips, stored=False, seed=seed, salt=42)
        sys_b, seed_b = second_system(system, seed)
        e_b = embed_chips(sys_b, chips, stored=True, seed=seed_b, salt=41)
        metric = system.metric
        rec = linkage_scores(e_a.numpy(), p_a.numpy(), labels, mated="subject", score=metric, max_nonmated=MAX_NONMATED,
                             seed=seed)
        him = rec.higher_is_match
        t = threshold_at_fmr(rec.nonmated, FMR, higher_is_match=him)
        link = linkage_scores(e_a.numpy(), e_b.numpy(), labels, mated="subject", score=metric, max_nonmated=MAX_NONMATED,
                              seed=seed)
        u = unlinkability(link.mated, link.nonmated)
        return {"images": len(idx), "subjects": int(len(np.unique(labels))), "metric": metric,
                "fnmr@1e-3": fnmr_at_fmr(rec.mated, rec.nonmated, FMR, higher_is_match=him),
                "threshold@1e-3": t, "d_sys": u.d_sys, "mated": int(u.n_mated), "nonmated": int(u.n_nonmated),
                "renewability": renewability(link.mated, t, higher_is_match=him),
                "second": "another key" if sys_b is not system else "another seed"}

    return load_or_compute(cache_dir("protection") / f"{d.name}-{key}.pt", compute, force)


PROTECTION_NOTE = (
    "ISO/IEC 24745 properties per setting, on LFW pairsDevTest images through the whole protected path and its "
    "server (the best server measured). Irreversibility: the worst-case type-II SAR at FMR 1e-3 over the attack suite "
    "(the verdict table's). Unlinkability: D↔sys (Gomez-Barrero et al. 2018; 0 = unlinkable) of templates of the "
    "same images enrolled in two systems under two keys, or, without a key, two seeds of the defense's randomness "
    "(mated: another image of the person); the histogram estimator reads ~0.03-0.09 for independent templates at "
    "these counts. Renewability: old templates accepted by the renewed system (FMR 1e-3 threshold; 0 = revoked). "
    "Recognition: FNMR at FMR 1e-3.")


def protection_table(results: dict, prows: list[dict]) -> str | None:
    """Markdown: the template-protection measures of every utility cell that has them, beside the verdict
    table's worst case; None when no cell has them."""
    from faceveil.bench.verdicts import worst_cases

    worst = {w["setting"]: w for w in worst_cases(prows)}
    head = ("| defense setting | FNMR @FMR 1e-3 % | irreversibility: worst type-II SAR % (attack) | D↔sys | second system "
            "| renewability: old accepted % | images / mated |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    n = 0
    for c in results["cells"]:
        p = c.get("result", {}).get("protection") if c["kind"] == "utility" and c["status"] == "ok" else None
        if not p:
            continue
        n += 1
        if "error" in p:
            out.append(f"| {c['setting']} | failed: `{p['error']}` | | | | | |")
            continue
        w = worst.get(c["setting"]) or {}
        r = w.get("worst")
        irr = "—" if r is None or r.get("SAR_II@1e-3") is None else f"{100 * r['SAR_II@1e-3']:.1f} ({r['attack']})"
        out.append(f"| {c['setting']} | {100 * p['fnmr@1e-3']:.1f} | {irr} | {p['d_sys']:.3f} | {p['second']} | "
                   f"{100 * p['renewability']:.1f} | {p['images']} / {p['mated']:,} |")
    return "\n".join(out + ["", PROTECTION_NOTE]) if n else None
