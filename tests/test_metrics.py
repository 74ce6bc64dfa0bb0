"""Application metrics against their formulas on hand-made inputs (AUROC and PCA come from
scikit-learn in the experiments)."""

import jax.numpy as jnp
import numpy as np

from vae_jax import losses, metrics


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
  np.testing.assert_allclose(
    metrics.bce_per_image(x, probs),
    losses.bce_per_example(jnp.asarray(logits), jnp.asarray(x)),
    rtol=1e-5,
  )


def test_quantize_rounds_to_uniform_levels_within_half_a_step():
  rs = np.random.RandomState(4)
  codes = rs.randn(1000, 3) * np.array([1, 5, 0.1])
  low, high = codes.min(0), codes.max(0)
  q = metrics.quantize(codes, low, high, bits=4)
  assert all(len(np.unique(q[:, j])) <= 16 for j in range(3))
  assert np.all(np.abs(q - codes) <= (high - low) / 15 / 2 + 1e-12)
  np.testing.assert_allclose(metrics.quantize(codes, low, high, bits=30), codes, atol=1e-7)
