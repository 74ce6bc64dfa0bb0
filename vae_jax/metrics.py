"""Metrics and the PCA baseline of the autoencoder applications (numpy, float64, host side).

Pixels are floats in [0, 1]. Per-image functions return one value per image (N,); the
experiments report their means.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


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


def auroc(scores_N, is_positive_N) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

  Computed from ranks (Mann-Whitney U). Positives are, e.g., anomalies scored by -log p(x).
  """
  scores = np.asarray(scores_N, np.float64)
  positive = np.asarray(is_positive_N, bool)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    raise ValueError(f"auroc: needs positives and negatives, got {n_pos} and {n_neg}")
  ranks = stats.rankdata(scores)  # Average ranks: a tie between classes counts 1/2.
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pca_fit(x_NxD, num_components: int) -> tuple[np.ndarray, np.ndarray]:
  """(mean_D, components_CxD): the top eigenvectors of the data's covariance, largest first."""
  x = np.asarray(x_NxD, np.float64)
  if not 1 <= num_components <= x.shape[1]:
    raise ValueError(f"num_components={num_components}: expected 1 to {x.shape[1]}")
  mean = x.mean(axis=0)
  centered = x - mean
  eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered)
  order = np.argsort(eigenvalues)[::-1][:num_components]
  return mean, eigenvectors[:, order].T


def pca_encode(x_NxD, mean_D, components_CxD) -> np.ndarray:
  return (np.asarray(x_NxD, np.float64) - mean_D) @ components_CxD.T


def pca_decode(codes_NxC, mean_D, components_CxD) -> np.ndarray:
  return codes_NxC @ components_CxD + mean_D


def quantize(codes_NxC, low_C, high_C, bits: int) -> np.ndarray:
  """Codes rounded to 2^bits uniform levels per dimension over [low, high] (clipped), as
  they would read back from storage at that precision."""
  levels = 2**bits - 1
  scale = np.where(high_C > low_C, high_C - low_C, 1.0)
  q = np.round(np.clip((codes_NxC - low_C) / scale, 0.0, 1.0) * levels)
  return low_C + q / levels * scale
