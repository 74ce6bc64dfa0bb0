"""Metrics of the autoencoder applications (numpy, float64, host side).

The AUROC and the PCA baseline come from scikit-learn (roc_auc_score, PCA).

Pixels are floats in [0, 1]. Per-image functions return one value per image (N,); the
experiments report their means.
"""

from __future__ import annotations

import numpy as np


def mse_per_pixel(x_NxD, y_NxD) -> np.ndarray:
  """Mean squared error over each image's pixels."""
  return np.mean((np.asarray(x_NxD, np.float64) - np.asarray(y_NxD, np.float64)) ** 2, axis=1)


def bce_per_image(x_NxD, probs_NxD, eps: float = 1e-7) -> np.ndarray:
  """-sum_d [x log p + (1 - x) log(1 - p)]: nats per image, p clipped to [eps, 1 - eps] (a
  PCA reconstruction can leave [0, 1])."""
  x = np.asarray(x_NxD, np.float64)
  p = np.clip(np.asarray(probs_NxD, np.float64), eps, 1 - eps)
  return -np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)


def psnr(clean_NxD, other_NxD, max_value: float = 1.0) -> np.ndarray:
  """Peak signal-to-noise ratio per image: 10 log10(max^2 / MSE), dB (inf when equal)."""
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(max_value**2 / mse_per_pixel(clean_NxD, other_NxD))


def quantize(codes_NxC, low_C, high_C, bits: int) -> np.ndarray:
  """Codes rounded to 2^bits uniform levels per dimension over [low, high] (clipped), as
  they would read back from storage at that precision."""
  levels = 2**bits - 1
  scale = np.where(high_C > low_C, high_C - low_C, 1.0)
  q = np.round(np.clip((codes_NxC - low_C) / scale, 0.0, 1.0) * levels)
  return low_C + q / levels * scale
