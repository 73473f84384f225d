"""faceveil's own protection, ``keyed-projection``, measured as template protection is (ISO/IEC 24745
properties as the biometric-template-protection literature measures them) and along its strength parameter.

- **Recognition**: LFW 10-fold accuracy (all 6,000 pairs) and FNMR at FMR 1e-3 (LFW's 3,000 impostor pairs,
  all under one key: an impostor who holds the victim's key, the conservative case), per template length m.
- **Unlinkability**: D↔sys (Gomez-Barrero et al., IEEE TIFS 2018) of the templates of LFW subjects with two or
  more images enrolled in two systems under two keys (mated: another image of the subject, the paper's
  protocol), beside the same subjects' unprotected embeddings and the same key reused in both systems.
- **Renewability**: the fraction of old templates (key A) that the renewed system (key B) accepts for
  another image of the same person, at the renewed system's FMR 1e-3 threshold.
- **Irreversibility along m**: the closed-form ``ridge`` attacker (the floor of the attack suite) on every
  template length, in threat model (a) (each user's key secret) and (b) (key known: a deployment-wide key the
  attacker's own client holds); the bench's cells run the whole suite on m = 1,024.
- **Privacy–utility curve**: accuracy against ridge's type-II SAR at FMR 1e-3, (a) and (b).

Templates are computed from the cached dlib embeddings of the LFW images with :meth:`KeyedProjection.encode`
(what :meth:`~KeyedProjection.protect` does after the recogniser; a test checks they agree exactly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from faceveil.bench.experiments.common import ExperimentContext, attempt, md_table, pct, privacy
from faceveil.bench.plan import EXPERIMENTS, SETTINGS, Setting
from faceveil.defenses import get_defense
from faceveil.keys import SecretKey
from faceveil.storage import save_figure_atomic, write_json_atomic

#: the bench's settings: the default template length under both threat models
SETTINGS["keyed-projection"] = [
    Setting("keyed-projection m=1024 (a: own key per user, secret)", "keyed-projection",
            {"bits": 1024, "research_key_seed": 0}),
    Setting("keyed-projection m=1024 (b: key known: one deployment key)", "keyed-projection",
            {"bits": 1024, "key_scope": "deployment", "research_key_seed": 0}),
]

#: template lengths of the curve (0 = the keyed rotation, real-valued)
CURVE_BITS = (64, 256, 1024, 2048, 0)
#: judge FMR of the recognition and renewability rows
FMR = 1e-3


def _label(bits: int) -> str:
    return "rotation (m=d, real)" if bits == 0 else f"m={bits}"


def lfw_embeddings(ctx: ExperimentContext):
    """dlib embeddings of both sides of LFW's 6,000 pairs (cached), the pairs, and the image ids."""
    from faceveil.bench.lfw import pair_embeddings
    from faceveil.models import deployed_recognizer

    pairs = ctx.lfw.pairs("pairs")
    ea, eb, _ = pair_embeddings(deployed_recognizer(), ctx.lfw, pairs, progress=False)
    return ea, eb, pairs


def templates(defense, f: torch.Tensor, key: SecretKey) -> torch.Tensor:
    """Templates of embeddings ``f`` under ``key`` (one system, one key)."""
    d = defense.with_key(key)
    return d.encode(f, d.matrix())


def recognition(defense, ea, eb, pairs) -> dict:
    """Accuracy (10-fold) and FNMR at FMR 1e-3 of LFW pairs with every template under the defense's key."""
    from faceveil.bench.lfw import verification
    from faceveil.metrics.protection import fnmr_at_fmr
    from faceveil.models.base import pairwise_distance

    ta, tb = defense.encode(ea, defense.matrix()), defense.encode(eb, defense.matrix())
    r = verification(ta, tb, pairs, defense.name, metrics=("cosine",))[0]
    d = pairwise_distance(ta, tb, "cosine").double().numpy()
    return {"acc_mean": r.acc_mean, "acc_std": r.acc_std, "fnmr@1e-3": fnmr_at_fmr(d[pairs.same], d[~pairs.same], FMR)}


def linkage(defense, ctx: ExperimentContext, ea, eb, pairs) -> dict:
    """D↔sys across two keys (and, for scale, of unprotected embeddings and of one key reused), plus the plot."""
    from faceveil.metrics.protection import linkage_scores
    from faceveil.metrics.unlinkability import plot_unlinkability, unlinkability

    ids = np.concatenate([pairs.a, pairs.b])
    uniq, first = np.unique(ids, return_index=True)
    f = torch.cat([ea, eb])[first]
    labels = np.array(ctx.lfw.dataset().labels)[uniq]
    ka, kb = SecretKey.from_research_seed(ctx.seed + 1), SecretKey.from_research_seed(ctx.seed + 2)
    out, plots = {}, []
    cases = {"two keys": (templates(defense, f, ka), templates(defense, f, kb)),
             "same key reused": (templates(defense, f, ka), templates(defense, f, ka)),
             "unprotected embedding": (f, f)}
    for name, (a, b) in cases.items():
        s = linkage_scores(a.numpy(), b.numpy(), labels, mated="subject", score="cosine", seed=ctx.seed)
        u = unlinkability(s.mated, s.nonmated)
        out[name] = {"d_sys": u.d_sys, "mated": int(u.n_mated), "nonmated": int(u.n_nonmated)}
        if name == "two keys":
            p = Path(ctx.out_dir) / "keyed-projection-unlinkability.png"
            plots.append(str(plot_unlinkability(u, p, f"keyed-projection {_label(defense.bits)}: two keys, LFW",
                                                "cosine similarity of templates")))
    out["figures"] = plots
    return out


def renewal(defense, ea, eb, pairs, seed: int) -> dict:
    """Old templates (key A) of LFW same-pairs' first images against the renewed system (key B) probing their
    second images, at key B's FMR 1e-3 threshold: the fraction still accepted (0 = revoked)."""
    from faceveil.metrics.protection import renewability, threshold_at_fmr
    from faceveil.models.base import pairwise_distance

    ka, kb = SecretKey.from_research_seed(seed + 1), SecretKey.from_research_seed(seed + 2)
    new_a, new_b = templates(defense, ea, kb), templates(defense, eb, kb)
    old_a = templates(defense, ea, ka)
    imp = pairwise_distance(new_a[~pairs.same], new_b[~pairs.same], "cosine").double().numpy()
    t = threshold_at_fmr(imp, FMR)
    same = pairs.same
    old_vs_new = pairwise_distance(old_a[same], new_b[same], "cosine").double().numpy()
    new_vs_new = pairwise_distance(new_a[same], new_b[same], "cosine").double().numpy()
    return {"old_accepted": renewability(old_vs_new, t), "renewed_genuine_accepted": float((new_vs_new <= t).mean()),
            "threshold": t}


def _sar(res: dict | None) -> dict:
    if not res:
        return {}
    m = res["metrics"]
    r, rp = m["reconstruction"], m.get("random person", {})
    return {k: r.get(k) for k in ("SAR_I@1e-3", "SAR_II@1e-3", "judge_SAR_II@1e-3", "COS", "SSIM")} | {
        "random_person_COS": rp.get("COS")}


def run(ctx: ExperimentContext) -> dict:
    from faceveil.bench.lfw import verification

    data: dict = {"recognition": {}, "attack": {}, "errors": {}}
    ea, eb, pairs = lfw_embeddings(ctx)
    dlib_acc = verification(ea, eb, pairs, "dlib", metrics=("cosine",))[0].acc_mean
    for bits in CURVE_BITS:
        d = get_defense("keyed-projection", bits=bits, research_key_seed=ctx.seed)
        data["recognition"][_label(bits)] = recognition(d, ea, eb, pairs)
        for scope, tm in (("user", "a"), ("deployment", "b")):
            da = get_defense("keyed-projection", bits=bits, key_scope=scope, research_key_seed=ctx.seed)
            res, err = attempt(privacy, da, "ridge", ctx)
            data["attack"][f"{_label(bits)} ({tm})"] = _sar(res)
            if err:
                data["errors"][f"ridge {_label(bits)} ({tm})"] = err
    d0 = get_defense("keyed-projection", research_key_seed=ctx.seed)
    data["unlinkability"] = linkage(d0, ctx, ea, eb, pairs)
    data["renewability"] = renewal(d0, ea, eb, pairs, ctx.seed)
    data["dlib_acc"] = dlib_acc
    fig = plot_curve(data, Path(ctx.out_dir) / "keyed-projection-curve.png", dlib_acc)
    write_json_atomic(Path(ctx.out_dir) / "keyed-projection.json", data)
    return {"markdown": markdown(data, fig), "data": data,
            "figures": [*data["unlinkability"]["figures"], *([str(fig)] if fig else [])]}


def markdown(data: dict, fig: Path | None, prefix: str = "", heading: bool = True) -> str:
    """The experiment's section (figures linked as ``prefix`` + file name; ``heading``: with its title)."""
    rec, att = data["recognition"], data["attack"]
    rows = []
    for lab, r in rec.items():
        a, b = att.get(f"{lab} (a)", {}), att.get(f"{lab} (b)", {})
        rows.append([lab, pct(r["acc_mean"]), pct(r["fnmr@1e-3"]),
                     *(pct(x[k]) if x.get(k) is not None else "—" for x in (a, b) for k in ("SAR_I@1e-3", "SAR_II@1e-3")),
                     *(f"{x['COS']:.3f}" if x.get("COS") is not None else "—" for x in (a, b))])
    u, rn = data["unlinkability"], data["renewability"]
    md = [*(["### keyed-projection: ISO/IEC 24745 measures and the strength parameter", ""] if heading else []),
          f"LFW accuracy of the unprotected dlib embedding (cosine): {pct(data['dlib_acc'])} %. "
          "Every template of a row under one key (genuine pairs as with per-user keys; impostors as if they held the "
          "victim's key). `ridge` (the attack suite's closed-form floor) SAR at dlib's FMR 1e-3 threshold; (a) each "
          "user's key secret, (b) the key known (one deployment key the attacker's client holds).", "",
          md_table(["template", "LFW acc %", "FNMR@FMR1e-3 %", "(a) SAR I %", "(a) SAR II %", "(b) SAR I %",
                    "(b) SAR II %", "(a) COS", "(b) COS"], rows), "",
          "Unlinkability (D↔sys, 0 = unlinkable, 1 = fully linkable; LFW subjects with ≥ 2 images, mated = another "
          "image of the subject): " + ", ".join(f"{k} {v['d_sys']:.3f} ({v['mated']:,} mated / {v['nonmated']:,} "
                                                  f"non-mated)" for k, v in u.items() if k != "figures") + ".", "",
          f"Renewability (m=1024): after a key change, {pct(rn['old_accepted'])} % of old templates are accepted for "
          f"another image of the same person (the renewed system accepts {pct(rn['renewed_genuine_accepted'])} % of "
          "genuine new ones) at its FMR 1e-3 threshold.", ""]
    md += [f"![unlinkability]({prefix}{Path(p).name})" for p in u["figures"]]
    if fig:
        md += ["", f"![privacy-utility curve]({prefix}{Path(fig).name})"]
    if data["errors"]:
        md += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items())]
    return "\n".join(md) + "\n"


def plot_curve(data: dict, path: Path, dlib_acc: float | None) -> Path | None:
    """Accuracy against ridge's type-II SAR at FMR 1e-3 along m, threat models (a) and (b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tm, style in (("a", "o-"), ("b", "s--")):
        xs, ys, labs = [], [], []
        for lab, r in data["recognition"].items():
            s = data["attack"].get(f"{lab} ({tm})", {}).get("SAR_II@1e-3")
            if s is not None:
                xs.append(100 * s)
                ys.append(100 * r["acc_mean"])
                labs.append(lab)
        if xs:
            ax.plot(xs, ys, style, label={"a": "(a) own key per user, secret", "b": "(b) key known"}[tm])
            for x, y, lab in zip(xs, ys, labs, strict=True):
                ax.annotate(lab.split(" ")[0], (x, y), textcoords="offset points", xytext=(4, -10 if tm == "b" else 4),
                            fontsize=7)
    if dlib_acc:
        ax.axhline(100 * dlib_acc, color="grey", lw=0.8, ls=":", label="unprotected dlib")
    ax.set_xlabel("ridge type-II SAR at FMR 1e-3 (%)")
    ax.set_ylabel("LFW accuracy (%)")
    ax.set_title("keyed-projection: privacy-utility along the template length")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


EXPERIMENTS.register("keyed-projection")(run)
