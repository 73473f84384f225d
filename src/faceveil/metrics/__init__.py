"""Image metrics (MSE, PSNR, SSIM, MS-SSIM), identity metrics (COS, SRRA, verification) and
template-protection measures (ISO/IEC 24745: unlinkability D↔sys, FNMR at FMR, renewability)."""

from faceveil.metrics.identity import cosine, srra
from faceveil.metrics.image import ms_ssim, mse, psnr, ssim
from faceveil.metrics.protection import LinkageScores, fnmr_at_fmr, linkage_scores, renewability, threshold_at_fmr
from faceveil.metrics.unlinkability import Unlinkability, d_sys, local_linkability, plot_unlinkability, unlinkability
from faceveil.metrics.verification import kfold_accuracy, roc, tpr_at_fpr

__all__ = [
    "mse", "psnr", "ssim", "ms_ssim", "cosine", "srra", "kfold_accuracy", "roc", "tpr_at_fpr",
    "Unlinkability", "unlinkability", "d_sys", "local_linkability", "plot_unlinkability",
    "LinkageScores", "linkage_scores", "fnmr_at_fmr", "threshold_at_fmr", "renewability",
]
