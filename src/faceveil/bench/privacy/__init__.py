"""Run an attack against a defense under an explicit threat model and judge it.

The attacker (black-box client) protects public faces himself — CelebA aligned + wild + LFW
identities absent from pairs.txt — and trains a reconstruction network on (leaked data, face)
pairs ("adversarial training" in FaceObfuscator's words). Targets are LFW images from pairs.txt
(identity-disjoint). The reconstruction is judged by

- pixel metrics against the target chip: MSE (in [0,1] units), PSNR (dB, range 1), SSIM;
- COS: cosine between an *independent* recogniser's embeddings of reconstruction and original
  (faceres / mobilefacenet when installed; otherwise dlib, and the result says so), centred on the
  judge's mean embedding over public faces so that unrelated faces score ~0;
- SRRA: the reconstruction replayed to the deployed dlib recogniser, accepted as the victim at
  the saved operating threshold (from pairsDevTrain); two variants: against the template of the
  same image, and against the other image of an LFW same-pair (the realistic one);

- closer-to-own: the fraction of reconstructions closer (deployed recogniser) to their own source
  than to a random other target (0.5 = no identity information);
- SAR, the successful attack rate of the template-inversion literature: the reconstruction accepted by the
  deployed recogniser at its FMR 1e-3 and 1e-4 thresholds (fitted on LFW impostor pairs,
  :func:`faceveil.bench.lfw.fmr_thresholds`), type I against the source image's template, type II against
  the other image of the same-pair; and by the independent judge at its own FMR 1e-3 threshold;

next to two "no information" baselines: the attacker's mean face, and a random other person.
"""

from faceveil.bench.privacy.figures import image_grid, visualise_held
from faceveil.bench.privacy.judging import INDEPENDENT_JUDGES, cos_judge, embed_images, eval_pairs, grid_positions, judge_centre
from faceveil.bench.privacy.leaks import attacker_source
from faceveil.bench.privacy.run import format_result, judge_attack, run_attack, train_attacker, whitebox_attack

__all__ = ["INDEPENDENT_JUDGES", "attacker_source", "cos_judge", "embed_images", "eval_pairs", "format_result",
           "grid_positions", "image_grid", "judge_attack", "judge_centre", "run_attack", "train_attacker",
           "visualise_held", "whitebox_attack"]
