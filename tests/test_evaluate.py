"""The importance-weighted log-likelihood and the latent diagnostics, against independent
computations (numpy float64, closed forms)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cli, make_model
from scipy import special, stats

from vae_jax import evaluate, losses, objectives

D, L = 12, 3  # A small model: fast, and the estimator's statistics show within seconds.


def _state(seed: int = 0):
  """A small mlp on D-pixel images (D x 1 x 1), initialised from seed."""
  return make_model(
    {"model.hidden_dim": 16, "model.latent_dim": L, "seed": seed}, image_shape=(D, 1, 1)
  )[0]


def _iwae(params, apply_fn, x_NxD, *args, **kwargs):
  """The estimator on the flat test inputs, given as the model's D x 1 x 1 images."""
  return evaluate.iwae_log_likelihood(
    params, apply_fn, np.reshape(x_NxD, (len(x_NxD), D, 1, 1)), *args, **kwargs
  )


def _binary(n: int, seed: int = 0) -> np.ndarray:
  return (np.random.RandomState(seed).rand(n, D) < 0.4).astype(np.float32)


def _numpy_forward(params, x, eps_NxKxL):
  """(mu_Nx1xL, logvar_Nx1xL, z_NxKxL, log p(x|z)_NxK) in float64, written out from the layers."""
  p = jax.device_get(params)
  dense = lambda h, layer: h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"])
  h = np.maximum(dense(np.asarray(x, np.float64), p["encoder"]["hidden"]), 0)
  mu, logvar = dense(h, p["encoder"]["mu"])[:, None], dense(h, p["encoder"]["logvar"])[:, None]
  z = mu + np.exp(0.5 * logvar) * eps_NxKxL
  logits = dense(np.maximum(dense(z, p["decoder"]["hidden"]), 0), p["decoder"]["logits"])
  log_px = (
    x[:, None] * -np.logaddexp(0, -logits) + (1 - x[:, None]) * -np.logaddexp(0, logits)
  ).sum(-1)
  return mu, logvar, z, log_px


def _numpy_log_weights(params, x, eps_NxKxL):
  """log p(x|z_k) + log p(z_k) - log q(z_k|x) in float64."""
  mu, logvar, z, log_px = _numpy_forward(params, x, eps_NxKxL)
  return (
    log_px + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  )


def test_estimator_matches_numpy_float64_with_the_same_noise():
  state, x, key, k = _state(), _binary(5), jax.random.key(3), 40
  result = _iwae(state.params, state.apply_fn, x, key, k)
  chex.assert_shape([result["iwae"], result["elbo"]], (5,))
  # Sample j of example i draws normal(fold_in(fold_in(key, i), j), (1, 1, L)): the contract.
  eps = np.stack([[_noise(key, i, j, L) for j in range(k)] for i in range(5)])
  log_w = _numpy_log_weights(state.params, x, eps)
  np.testing.assert_allclose(
    result["iwae"], special.logsumexp(log_w, axis=1) - np.log(k), rtol=1e-5
  )
  np.testing.assert_allclose(result["elbo"], log_w.mean(axis=1), rtol=1e-5)


def _noise(key, i: int, j: int, units: int) -> np.ndarray:
  """The standard normals of sample j of example i (importance_terms' draw from its key)."""
  key_ij = jax.random.fold_in(jax.random.fold_in(key, i), j)
  return np.asarray(jax.random.normal(key_ij, (1, 1, units))[0, 0], np.float64)


def test_chunked_equals_unchunked():
  state, x, key = _state(), _binary(10), jax.random.key(4)
  whole = _iwae(state.params, state.apply_fn, x, key, 37, batch_size=10, sample_chunk=37)
  # Batches of 3 (the last one padded) and chunks of 5 samples (the last one padded).
  chunked = _iwae(state.params, state.apply_fn, x, key, 37, batch_size=3, sample_chunk=5)
  np.testing.assert_allclose(chunked["iwae"], whole["iwae"], rtol=1e-6)
  np.testing.assert_allclose(chunked["elbo"], whole["elbo"], rtol=1e-6)
  again = _iwae(state.params, state.apply_fn, x, key, 37, batch_size=3, sample_chunk=5)
  np.testing.assert_array_equal(again["iwae"], chunked["iwae"])  # Deterministic given the key.


def _prior_posterior_constant_decoder(seed: int):
  """(state, params, bias): every weight 0 (so mu = 0, logvar = 0) but random decoder logits
  biases, so q(z|x) = p(z) and the decoder outputs sigmoid(bias) whatever z is."""
  state = _state()
  bias = np.random.RandomState(seed).randn(D).astype(np.float32)
  params = jax.tree.map(np.zeros_like, jax.device_get(state.params))
  params["decoder"]["logits"]["bias"] = bias
  return state, params, bias


def test_exact_when_posterior_is_the_prior_and_decoder_is_constant():
  """q(z|x) = p(z) and p(x|z) = p(x): every log-weight is log p(x), for any K."""
  state, params, bias = _prior_posterior_constant_decoder(seed=5)
  x = _binary(6, seed=1)
  probs = 1 / (1 + np.exp(-bias.astype(np.float64)))
  log_px = (x * np.log(probs) + (1 - x) * np.log1p(-probs)).sum(-1)
  for k in (1, 10, 500):
    result = _iwae(params, state.apply_fn, x, jax.random.key(k), k)
    np.testing.assert_allclose(result["iwae"], log_px, rtol=1e-5)
    np.testing.assert_allclose(result["elbo"], log_px, rtol=1e-5)


def test_exact_for_a_gaussian_decoder_on_continuous_inputs():
  """The same construction with N(x; sigmoid(b), 0.2^2): a log-density, no binary check."""
  state, params, bias = _prior_posterior_constant_decoder(seed=6)
  x = np.random.RandomState(7).rand(4, D).astype(np.float32)
  log_px = stats.norm.logpdf(x, 1 / (1 + np.exp(-bias.astype(np.float64))), 0.2).sum(-1)
  result = _iwae(
    params,
    state.apply_fn,
    x,
    jax.random.key(0),
    50,
    likelihood=objectives.Likelihood("gaussian", 0.2),
  )
  np.testing.assert_allclose(result["iwae"], log_px, rtol=1e-5)


def _replicated_estimates(k: int, copies: int = 3000):
  """The bound at K = k for `copies` copies of 4 examples: each copy draws its own noise."""
  state, x = _state(seed=1), _binary(4, seed=2)
  est = _iwae(
    state.params, state.apply_fn, np.tile(x, (copies, 1)), jax.random.key(k), k, batch_size=512
  )
  return state, x, est["iwae"].reshape(copies, 4)


def test_k1_equals_the_elbo_in_expectation():
  state, x, bound_Cx4 = _replicated_estimates(1)
  # ELBO with the analytic KL and a large independent Monte Carlo for E_q log p(x|z).
  eps = np.asarray(jax.random.normal(jax.random.key(123), (4, 200_000, L)), np.float64)
  mu, logvar, _, log_px = _numpy_forward(state.params, x, eps)
  mu, logvar = mu[:, 0], logvar[:, 0]
  kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), -1)
  elbo = log_px.mean(1) - kl
  se = np.sqrt(bound_Cx4.var(0, ddof=1) / len(bound_Cx4) + log_px.var(1) / log_px.shape[1])
  assert np.all(np.abs(bound_Cx4.mean(0) - elbo) < 4 * se), (bound_Cx4.mean(0), elbo, se)


def test_bound_does_not_decrease_with_k_on_average():
  means, ses = [], []
  for k in (1, 2, 5, 20, 100):
    _, _, bound_Cx4 = _replicated_estimates(k, copies=1000)
    means.append(bound_Cx4.mean(0))
    ses.append(bound_Cx4.std(0, ddof=1) / np.sqrt(len(bound_Cx4)))
  means, ses = np.array(means), np.array(ses)
  for i in range(1, len(means)):
    assert np.all(means[i] >= means[i - 1] - 3 * np.hypot(ses[i], ses[i - 1])), means
  assert np.all(means[-1] - means[0] > 4 * (ses[0] + ses[-1]))  # Clearly tighter at K = 100.


def test_refuses_continuous_inputs():
  state = _state()
  gray = np.full((2, D), 0.5, np.float32)
  with pytest.raises(ValueError, match="24 of 24 values are not 0 or 1.*binarize"):
    _iwae(state.params, state.apply_fn, gray, jax.random.key(0), 5)


def test_binarize_is_a_bernoulli_draw_of_the_pixel_intensity():
  x_u8 = np.array([[0, 255, 128] * 20000], np.uint8)
  x = evaluate.binarize(x_u8, jax.random.key(0))
  chex.assert_type(x, np.float32)
  assert set(np.unique(x)) == {0.0, 1.0}
  assert x[0, 0::3].max() == 0 and x[0, 1::3].min() == 1
  assert abs(x[0, 2::3].mean() - 128 / 255) < 0.01
  np.testing.assert_array_equal(
    evaluate.binarize(x_u8, jax.random.key(0)), x
  )  # Fixed key, fixed set.


def test_latent_diagnostics_active_units_and_kl_per_dim():
  rs = np.random.RandomState(0)
  mu = rs.randn(5000, 4) * np.array([1.0, 0.5, 0.2, 0.05])  # Variances 1, 0.25, 0.04, 0.0025.
  logvar = rs.randn(5000, 4) * 0.1 - 1
  diag = evaluate.latent_diagnostics(mu, logvar)
  np.testing.assert_array_equal(diag["active"], [True, True, True, False])
  assert diag["active_units"] == 3
  np.testing.assert_allclose(diag["activity"], mu.var(axis=0))
  # Per-dimension KL sums to the mean per-example KL of the training loss.
  np.testing.assert_allclose(
    diag["kl_per_dim"].sum(),
    np.mean(losses.kl_per_example(jnp.asarray(mu), jnp.asarray(logvar))),
    rtol=1e-5,
  )
  warning = evaluate.collapse_warning(diag)
  assert "1 of 4 latent units (dims 3) inactive" in warning
  assert evaluate.collapse_warning(evaluate.latent_diagnostics(mu[:, :3], logvar[:, :3])) is None
  collapsed = evaluate.latent_diagnostics(np.zeros((10, 4)), np.zeros((10, 4)))
  assert "all latent units inactive" in evaluate.collapse_warning(collapsed)


def test_likelihood_command_reports_nll_elbo_gap_and_warns(trained_run):
  result = cli("likelihood", f"--workdir={trained_run}", "--num_samples=20", "--num=30")
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report["examples"] == 30 and report["num_samples"] == 20
  assert report["test_nll"] <= report["test_neg_elbo"]
  np.testing.assert_allclose(report["gap"], report["test_neg_elbo"] - report["test_nll"], rtol=1e-6)
  assert len(report["kl_per_dim"]) == report["latent_dim"] == 20
  # The fixture trained on gray levels: the protocol's warning, on stderr and in the report.
  assert "config.data.binarize=False" in result.stderr
  assert any("config.data.binarize=False" in w for w in report["warnings"])


def test_the_autoencoders_run_is_refused_by_the_likelihood(small_splits, tmp_path):
  from vae_jax import config as config_lib, training

  config = config_lib.from_flat(
    {"objective.name": "ae", "optim.num_epochs": 1, "run.progress": False, "run.save_images": False}
  )
  training.train_and_evaluate(config, tmp_path / "ae", small_splits)
  with pytest.raises(
    ValueError, match="objective 'ae': a deterministic autoencoder has no q\\(z\\|x\\)"
  ):
    evaluate.evaluate_run(tmp_path / "ae", num_samples=5)
