"""Numbers the seed papers report, for a "paper" column beside ours (same cell, their setup)."""

from __future__ import annotations

#: (defense, metric, qualifier) -> (value, source). qualifier: server kind for accuracy, attack
#: name for privacy metrics; "*" matches any.
PAPER: dict[tuple[str, str, str], tuple[str, str]] = {
    # FaceObfuscator (Jin et al.), Table 3 (LFW accuracy, ArcFace backbone) and Table 4 (DN attack, LFW)
    ("faceobfuscator", "acc", "adapted"): ("99.68", "FaceObfuscator Tab. 3"),
    ("faceobfuscator", "SSIM", "dn"): ("0.471", "FaceObfuscator Tab. 4"),
    ("faceobfuscator", "SRRA", "dn"): ("0.00%", "FaceObfuscator Tab. 4"),
    # AdvFace (Wang et al., CVPR 2023) Table 1 (LFW, resrec attacker) and Table 2
    ("advface", "SSIM", "*"): ("0.28", "AdvFace Tab. 1"),
    ("advface", "SRRA", "*"): ("4.03%", "AdvFace Tab. 1"),
    ("advface", "acc", "frozen"): ("96.43 (online)", "AdvFace Tab. 2"),
    ("advface", "acc", "adapted"): ("97.78 (offline)", "AdvFace Tab. 2"),
    # PMT (Pu et al.): authorised-model accuracy on LFW, obfuscated-image SSIM
    ("pmt", "acc", "frozen"): ("≈99 (authorised)", "PMT Tab. 7"),
    ("pmt", "SSIM", "*"): ("≈0.03", "PMT Tab. 6"),
}

#: unprotected rows of the papers (their recognisers: ArcFace), for the 'none' settings
UNPROTECTED: dict[tuple[str, str], tuple[str, str]] = {
    ("SSIM", "*"): ("0.93", "AdvFace Tab. 1 (unprotected)"),
    ("SRRA", "*"): ("97.40%", "AdvFace Tab. 1 (unprotected)"),
    ("acc", "frozen"): ("99.72 (ArcFace)", "FaceObfuscator Tab. 3"),
}


def paper_value(defense: str, setting: str, metric: str, qualifier: str | None) -> str | None:
    """The paper's number for a cell, formatted "value (source)", or None."""
    table = {(k[1], k[2]): v for k, v in PAPER.items() if k[0] == defense}
    if defense == "none":
        # AdvFace's unprotected attack inverts the client's shallow features: our res1-map setting
        table = {k: v for k, v in UNPROTECTED.items() if k[0] == "acc" or "res1" in setting}
    for key in ((metric, qualifier or "*"), (metric, "*")):
        if key in table:
            v, src = table[key]
            return f"{v} ({src})"
    return None


def _number(text: str) -> float | None:
    """The leading number of a paper value ("96.43 (online)", "4.03%", "≈99 (authorised)"), or None."""
    import re

    m = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(m.group()) if m else None


def paper_accuracy(defense: str, setting: str) -> str | None:
    """The LFW accuracy the paper claims with its best server (adapted / retrained first), formatted with its source."""
    return next((v for server in ("adapted", "frozen") if (v := paper_value(defense, setting, "acc", server))), None)


def paper_point(defense: str, setting: str) -> tuple[float, float] | None:
    """What the paper claims for a defense as a point of the privacy–utility plot: (LFW accuracy %, attack success
    % as the paper reports it: SRRA), when it reports both; the best server's accuracy it claims (adapted first)."""
    acc = paper_accuracy(defense, setting)
    srra = paper_value(defense, setting, "SRRA", "dn")  # the papers attack with DN-style decoders
    if acc is None or srra is None or defense == "none":
        return None
    a, s = _number(acc), _number(srra)
    return None if a is None or s is None else (a, s)
