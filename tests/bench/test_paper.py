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
