"""The loss against an independent numpy computation of BCE + KL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import losses


def _numpy_reference(logits, x, mu, logvar):
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=-1)
  kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), axis=-1)
  return bce, kl


def test_per_example_terms_and_batch_sums_match_numpy():
  rs = np.random.RandomState(0)
  logits = rs.randn(7, 784).astype(np.float32) * 3
  x = rs.rand(7, 784).astype(np.float32)
  mu, logvar = rs.randn(2, 7, 20).astype(np.float32)
  bce_ref, kl_ref = _numpy_reference(logits, x, mu, logvar)
  np.testing.assert_allclose(losses.bce_per_example(logits, x), bce_ref, rtol=1e-5)
  np.testing.assert_allclose(losses.kl_per_example(mu, logvar), kl_ref, rtol=1e-5)
  loss, bce, kl = losses.vae_loss(jnp.asarray(logits), x, mu, logvar, beta=1.0)
  np.testing.assert_allclose(
    [loss, bce, kl], [bce_ref.sum() + kl_ref.sum(), bce_ref.sum(), kl_ref.sum()], rtol=1e-5
  )
  loss_beta, _, _ = losses.vae_loss(jnp.asarray(logits), x, mu, logvar, beta=4.0)
  np.testing.assert_allclose(loss_beta, bce_ref.sum() + 4 * kl_ref.sum(), rtol=1e-5)


def test_kl_is_zero_at_the_prior_and_bce_stable_for_large_logits():
  np.testing.assert_array_equal(losses.kl_per_example(jnp.zeros((2, 5)), jnp.zeros((2, 5))), [0, 0])
  # sigmoid(100) rounds to 1 in float32; the logits form still gives the exact 100 nats.
  bce = losses.bce_per_example(jnp.array([[100.0, -100.0]]), jnp.array([[0.0, 1.0]]))
  np.testing.assert_allclose(bce, [200.0], rtol=1e-6)


def test_bce_gradient_is_sigmoid_minus_target_and_minus_logits():
  rs = np.random.RandomState(1)
  logits = (rs.randn(4, 30) * 10).astype(np.float32)
  x = rs.rand(4, 30).astype(np.float32)
  total = lambda l, x: jnp.sum(losses.bce_per_example(l, x))
  d_logits, d_x = jax.grad(total, argnums=(0, 1))(logits, x)
  np.testing.assert_allclose(
    d_logits, 1 / (1 + np.exp(-logits.astype(np.float64))) - x, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(d_x, -logits, rtol=1e-6)
  # Second-order use (e.g. jax.hessian in analyses) goes through the same rule.
  hess_diag = jax.grad(lambda l: jnp.sum(jax.grad(total)(l, x)))(logits)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(hess_diag, p * (1 - p), rtol=1e-4, atol=1e-6)


def test_gaussian_nll_matches_numpy_and_needs_its_sigma():
  rng = np.random.default_rng(0)
  logits, x = rng.normal(size=(3, 2, 2, 1)), rng.uniform(size=(3, 2, 2, 1))
  mean = 1 / (1 + np.exp(-logits.reshape(3, -1)))
  for log_sigma in (np.log(0.3), rng.normal(size=(2, 2, 1)) * 0.1):
    sigma = np.exp(np.reshape(log_sigma, -1))
    expected = -np.sum(
      -0.5 * ((x.reshape(3, -1) - mean) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi),
      -1,
    )
    got = losses.nll_per_example(
      jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32), "gaussian", log_sigma
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="likelihood 'gaussian': expected log_sigma"):
    losses.nll_per_example(jnp.zeros((1, 4)), jnp.zeros((1, 4)), "gaussian")
