"""The report's "paper" column: a paper's number only beside the cell it measured."""

from faceveil.bench.paper import paper_value


def test_paper_values_match_their_cells():
    assert paper_value("faceobfuscator", "FaceObfuscator", "SSIM", "dn") == "0.471 (FaceObfuscator Tab. 4)"
    assert paper_value("faceobfuscator", "FaceObfuscator", "SSIM", "cgan") is None
    # AdvFace's unprotected attack inverts shallow client features: the res1 setting, not the embedding
    assert paper_value("none", "none (res1 map)", "SSIM", "dn").startswith("0.93")
    assert paper_value("none", "none (embedding)", "SSIM", "dn") is None
    assert paper_value("none", "none (embedding)", "acc", "frozen").startswith("99.72")
    assert paper_value("blur", "blur", "acc", "frozen") is None


def test_paper_points_of_the_privacy_utility_plot():
    """The plot's paper claims: accuracy (the best server the paper reports) and its attack's SRRA, only where the
    paper reports both."""
    from faceveil.bench.paper import paper_point

    assert paper_point("faceobfuscator", "FaceObfuscator (AC01,AC10; b=2; [-60,60])") == (99.68, 0.0)
    assert paper_point("advface", "AdvFace ε=0.2") == (97.78, 4.03)
    assert paper_point("pmt", "PMT") is None  # PMT reports SSIM, not a success rate
    assert paper_point("none", "none (res1 map)") is None and paper_point("blur", "blur") is None


def test_verdict_table_quotes_the_paper_claim():
    from faceveil.bench.verdicts import paper_claim

    assert paper_claim("faceobfuscator", "FaceObfuscator") == ("acc 99.68 (FaceObfuscator Tab. 3); "
                                                               "SRRA 0.00% (FaceObfuscator Tab. 4)")
    assert paper_claim("pmt", "PMT").startswith("acc ≈99") and paper_claim("blur", "blur") == "—"
    assert paper_claim("none", "none (res1 map)") == "—"
