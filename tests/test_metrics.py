"""Application metrics and the PCA baseline against sklearn / numpy on hand-made inputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from vae_jax import losses, metrics


def test_auroc_matches_sklearn_with_ties():
  scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.05])
  positive = np.array([0, 0, 1, 1, 1, 0, 1, 0], bool)
  assert metrics.auroc(scores, positive) == pytest.approx(sk_metrics.roc_auc_score(positive, scores))
  rs = np.random.RandomState(0)
  scores, positive = rs.randint(0, 5, 300).astype(float), rs.rand(300) < 0.3  # Many ties.
  assert metrics.auroc(scores, positive) == pytest.approx(sk_metrics.roc_auc_score(positive, scores))


def test_auroc_extremes_and_refusal():
  assert metrics.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
  assert metrics.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
  assert metrics.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
  with pytest.raises(ValueError, match="needs positives and negatives"):
    metrics.auroc([1, 2], [1, 1])


def test_psnr_against_the_formula():
  clean = np.zeros((2, 100))
  other = np.stack([np.full(100, 0.1), np.r_[np.ones(1), np.zeros(99)]])
  # MSE 0.01 -> 20 dB; MSE 1/100 -> 20 dB as well, from one wrong pixel.
  np.testing.assert_allclose(metrics.psnr(clean, other), [20.0, 20.0])
  rs = np.random.RandomState(1)
  a, b = rs.rand(5, 784), rs.rand(5, 784)
  np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(1 / ((a - b) ** 2).mean(axis=1)))
  assert np.isinf(metrics.psnr(a, a)).all()


def test_bce_per_image_matches_the_logits_form():
  rs = np.random.RandomState(2)
  x, probs = rs.rand(4, 30), rs.uniform(0.01, 0.99, (4, 30))
  logits = np.log(probs / (1 - probs))
  np.testing.assert_allclose(metrics.bce_per_image(x, probs),
                             losses.bce_per_example(jnp.asarray(logits), jnp.asarray(x)), rtol=1e-5)


def test_pca_reconstruction_matches_numpy_svd():
  rs = np.random.RandomState(3)
  x = rs.randn(200, 6) @ rs.randn(6, 30) + rs.randn(200, 30) * 0.1 + 3.0
  for d in (1, 4, 6, 30):
    mean, components = metrics.pca_fit(x, d)
    recon = metrics.pca_decode(metrics.pca_encode(x, mean, components), mean, components)
    u, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(recon, x.mean(0) + (u[:, :d] * s[:d]) @ vt[:d], atol=1e-8)
    np.testing.assert_allclose(components @ components.T, np.eye(d), atol=1e-10)
  with pytest.raises(ValueError, match="num_components=31: expected 1 to 30"):
    metrics.pca_fit(x, 31)


def test_quantize_rounds_to_uniform_levels_within_half_a_step():
  rs = np.random.RandomState(4)
  codes = rs.randn(1000, 3) * np.array([1, 5, 0.1])
  low, high = codes.min(0), codes.max(0)
  q = metrics.quantize(codes, low, high, bits=4)
  assert all(len(np.unique(q[:, j])) <= 16 for j in range(3))
  assert np.all(np.abs(q - codes) <= (high - low) / 15 / 2 + 1e-12)
  np.testing.assert_allclose(metrics.quantize(codes, low, high, bits=30), codes, atol=1e-7)
