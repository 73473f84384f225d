"""Image metrics (MSE, PSNR, SSIM, MS-SSIM) and identity metrics (COS, SRRA, verification)."""

from faceveil.metrics.identity import cosine, srra
from faceveil.metrics.image import ms_ssim, mse, psnr, ssim
from faceveil.metrics.verification import kfold_accuracy, roc, tpr_at_fpr

__all__ = ["mse", "psnr", "ssim", "ms_ssim", "cosine", "srra", "kfold_accuracy", "roc", "tpr_at_fpr"]
