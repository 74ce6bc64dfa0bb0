"""Ablation objectives against independent numpy / scipy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_model
from scipy import integrate, special, stats

from vae_jax import losses, objectives, training
from vae_jax.registry import ConfigError


@pytest.mark.parametrize("lam", [0.01, 0.2, 0.45, 0.495, 0.5, 0.503, 0.7, 0.99])
def test_continuous_bernoulli_normaliser_matches_the_integral(lam):
  integral, _ = integrate.quad(lambda x: lam**x * (1 - lam) ** (1 - x), 0.0, 1.0)
  np.testing.assert_allclose(
    losses.continuous_bernoulli_log_norm(jnp.float32(lam)), -np.log(integral), rtol=1e-5
  )


def test_continuous_bernoulli_nll_is_minus_log_density():
  rs = np.random.RandomState(0)
  logits, x = rs.randn(3, 7).astype(np.float32), rs.rand(3, 7).astype(np.float32)
  lam = 1 / (1 + np.exp(-logits.astype(np.float64)))
  log_c = np.array(
    [
      [-np.log(integrate.quad(lambda t: l**t * (1 - l) ** (1 - t), 0, 1)[0]) for l in row]
      for row in lam
    ]
  )
  log_p = x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c
  np.testing.assert_allclose(
    losses.nll_per_example(logits, x, "continuous_bernoulli"), -log_p.sum(-1), rtol=1e-4
  )


def test_gaussian_nll_matches_scipy():
  rs = np.random.RandomState(1)
  logits, x = rs.randn(4, 6).astype(np.float32), rs.rand(4, 6).astype(np.float32)
  log_sigma = rs.randn(6).astype(np.float32) * 0.3
  mean = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = -stats.norm.logpdf(x, mean, np.exp(log_sigma)).sum(-1)
  np.testing.assert_allclose(
    losses.nll_per_example(logits, x, "gaussian", log_sigma), expected, rtol=1e-5
  )


def test_free_bits_floors_each_dimension_at_lambda():
  rs = np.random.RandomState(2)
  mu, logvar = (
    rs.randn(5, 4).astype(np.float32) * [0.01, 1, 2, 0.1],
    rs.randn(5, 4).astype(np.float32) * 0.1,
  )
  kl_bl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar))
  expected = 5 * np.maximum(kl_bl.mean(0), 0.5).sum()
  np.testing.assert_allclose(losses.free_bits_kl(mu, logvar, 0.5), expected, rtol=1e-5)
  np.testing.assert_allclose(losses.free_bits_kl(mu, logvar, 0.0), kl_bl.sum(), rtol=1e-5)


def test_iwae_bound_matches_numpy_logsumexp():
  rs = np.random.RandomState(3)
  k, b, l = 6, 3, 2
  mu, logvar = rs.randn(b, l), rs.randn(b, l) * 0.2
  z = mu + np.exp(0.5 * logvar) * rs.randn(k, b, l)
  log_px = -rs.rand(k, b) * 50
  log_pz = stats.norm.logpdf(z).sum(-1)
  log_qz = stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  expected = special.logsumexp(log_px + log_pz - log_qz, axis=0) - np.log(k)
  np.testing.assert_allclose(losses.iwae_bound(log_px, z, mu, logvar), expected, rtol=1e-5)
  single = losses.iwae_bound(log_px[:1], z[:1], mu, logvar)  # K = 1: the ELBO's sample.
  np.testing.assert_allclose(single, (log_px + log_pz - log_qz)[0], rtol=1e-5)


def _state(**values):
  """(state, objective_fn, hparams) of a small mlp on 12-pixel images (dotted overrides)."""
  state, _, fn, hparams = make_model(
    {"model.hidden_dim": 16, "model.latent_dim": 3, **values}, image_shape=(12, 1, 1)
  )
  return state, fn, hparams


def test_iwae_training_loss_is_minus_the_summed_bound():
  state, fn, hparams = _state(**{"objective.name": "iwae", "objective.num_samples": 4})
  x = jnp.asarray(np.random.RandomState(4).rand(5, 12, 1, 1), jnp.float32)
  key = jax.random.key(9)
  loss, _ = fn(state.params, state.apply_fn, x, key, hparams)
  p = jax.device_get(state.params)
  x = np.asarray(x).reshape(5, 12)
  dense = lambda h, layer: h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"])
  h = np.maximum(dense(np.asarray(x, np.float64), p["encoder"]["hidden"]), 0)
  mu, logvar = dense(h, p["encoder"]["mu"]), dense(h, p["encoder"]["logvar"])
  eps = np.asarray(jax.random.normal(key, (4, 5, 3)), np.float64)
  z = mu + np.exp(0.5 * logvar) * eps
  logits = dense(np.maximum(dense(z, p["decoder"]["hidden"]), 0), p["decoder"]["logits"])
  log_px = -(
    np.maximum(logits, 0) - logits * np.asarray(x) + np.log1p(np.exp(-np.abs(logits)))
  ).sum(-1)
  log_w = (
    log_px + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  )
  expected = -(special.logsumexp(log_w, axis=0) - np.log(4)).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_autoencoder_reconstructs_from_the_mean_and_has_no_kl():
  state, fn, hparams = _state(**{"objective.name": "ae"})
  x = jnp.asarray(np.random.RandomState(5).rand(5, 12, 1, 1), jnp.float32)
  loss, terms = fn(state.params, state.apply_fn, x, jax.random.key(1), hparams)
  logits, _, _ = state.apply_fn({"params": state.params}, x, None)
  np.testing.assert_allclose(loss, losses.bce_per_example(logits, x).sum(), rtol=1e-6)
  assert set(terms) == {"loss", "bce"}  # No KL term to report.
  grads = jax.grad(lambda p: fn(p, state.apply_fn, x, jax.random.key(1), hparams)[0])(state.params)
  assert not np.any(
    np.asarray(grads["encoder"]["logvar"]["kernel"])
  )  # The variance head is unused.


def test_learned_sigma_and_depth_add_parameters():
  state, _, _ = _state(
    **{
      "objective.likelihood": "gaussian",
      "objective.gaussian_sigma": 0.0,
      "model.num_hidden_layers": 2,
    }
  )
  assert state.params["log_sigma"].shape == (12, 1, 1)
  assert state.params["encoder"]["hidden_2"]["kernel"].shape == (16, 16)
  assert state.params["decoder"]["hidden_2"]["kernel"].shape == (16, 16)
  fixed, _, _ = _state(**{"objective.likelihood": "gaussian", "objective.gaussian_sigma": 0.1})
  assert "log_sigma" not in fixed.params


@pytest.mark.parametrize(
  "values",
  [
    {"objective.likelihood": "continuous_bernoulli"},
    {"objective.likelihood": "gaussian", "objective.gaussian_sigma": 0.0},
    {"objective.likelihood": "gaussian", "objective.gaussian_sigma": 0.1},
    {"objective.free_bits": 0.5},
    {"objective.name": "iwae", "objective.num_samples": 3},
    {"objective.name": "ae"},
    {"model.num_hidden_layers": 2},
    {"objective.corruption": "gaussian", "objective.corruption_level": 0.3},
    {"objective.corruption": "mask", "objective.corruption_level": 0.5},
    {"objective.name": "beta_tcvae", "objective.tc_weight": 4.0},
    {"model.name": "conv"},
  ],
)
def test_each_variant_trains_end_to_end(small_config, small_splits, tmp_path, values):
  small_config.update_from_flattened_dict(
    {"optim.num_epochs": 1, "run.save_images": False, **values}
  )
  state, records = training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  assert all(np.isfinite(records[0][k]) for k in ("train_loss", "test_loss", "test_bce"))
  if values.get("objective.name") == "ae":
    assert "test_kl" not in records[0]
  if values.get("objective.name") == "beta_tcvae":  # Its own metrics, and the ELBO as test loss.
    assert {"train_tc", "train_mi", "train_dwkl"} <= set(records[0]) and "test_tc" not in records[0]
  for leaf in jax.tree.leaves(state.params):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("objective.likelihood", "poisson", "config.objective.likelihood='poisson'"),
    ("objective.name", "gan", "config.objective.name='gan'"),
    ("objective.free_bits", -1.0, "config.objective.free_bits=-1.0"),
    ("objective.corruption", "blur", "config.objective.corruption='blur'"),
    ("objective.corruption_level", -0.1, "config.objective.corruption_level=-0.1"),
    (
      "objective.num_samples",
      2,
      "config.objective.num_samples=2: does not apply to objective 'elbo'",
    ),
  ],
)
def test_unknown_or_inapplicable_variant_values_are_refused(key, value, message):
  with pytest.raises(ConfigError, match=message):
    make_model({key: value})


def test_iwae_with_no_samples_and_a_masked_fraction_of_one_are_refused():
  with pytest.raises(ConfigError, match="config.objective.num_samples=0"):
    make_model({"objective.name": "iwae", "objective.num_samples": 0})
  with pytest.raises(ConfigError, match="corruption_level=1.0.*< 1"):
    make_model({"objective.corruption": "mask", "objective.corruption_level": 1.0})


def test_corruptions_add_clipped_noise_or_zero_a_fraction_of_pixels():
  x = jnp.full((400, 500), 0.5, jnp.float32)
  key = jax.random.key(0)
  noisy = np.asarray(objectives.corrupt(x, key, "gaussian", 0.1))
  assert abs(noisy.std() - 0.1) < 0.002 and abs(noisy.mean() - 0.5) < 0.002
  black = np.asarray(objectives.corrupt(jnp.zeros((100, 100)), key, "gaussian", 0.5))
  assert black.min() == 0.0 and black.max() <= 1.0 and (black == 0).mean() > 0.45  # Clipped.
  masked = np.asarray(objectives.corrupt(x, key, "mask", 0.3))
  assert abs((masked == 0).mean() - 0.3) < 0.005
  assert set(np.unique(masked)) == {0.0, 0.5}  # Kept pixels are unchanged.
  np.testing.assert_array_equal(objectives.corrupt(x, key, "none", 0.3), x)


def test_denoising_loss_encodes_the_corrupted_input_and_scores_the_clean_one():
  state, fn, hparams = _state(
    **{"objective.corruption": "gaussian", "objective.corruption_level": 0.3}
  )
  x = jnp.asarray(np.random.RandomState(6).rand(5, 12, 1, 1), jnp.float32)
  key = jax.random.key(2)
  loss, terms = fn(state.params, state.apply_fn, x, key, hparams)
  x_in = objectives.corrupt(x, jax.random.fold_in(key, 2), "gaussian", 0.3)
  logits, mu, logvar = state.apply_fn({"params": state.params}, x_in, key)
  bce = losses.bce_per_example(logits, x).sum()
  np.testing.assert_allclose(terms["bce"], bce, rtol=1e-6)
  np.testing.assert_allclose(loss, bce + losses.kl_per_example(mu, logvar).sum(), rtol=1e-6)
  clean_logits, _, _ = state.apply_fn({"params": state.params}, x, key)
  assert not np.allclose(logits, clean_logits)  # The encoder did see other inputs.
  clean = hparams.for_evaluation()  # Test losses are on clean inputs, beta 1.
  assert clean.corruption == "none" and float(clean.beta) == 1.0


def test_beta_tcvae_terms_match_a_numpy_minibatch_weighted_sampling_estimate():
  state, fn, hparams = _state(**{"objective.name": "beta_tcvae", "objective.tc_weight": 3.0})
  hparams = hparams.replace(num_train_examples=1000)
  x = jnp.asarray(np.random.RandomState(8).rand(6, 12, 1, 1), jnp.float32)
  key = jax.random.key(4)
  loss, terms = fn(state.params, state.apply_fn, x, key, hparams)
  logits, mu, logvar = (
    np.asarray(a, np.float64) for a in state.apply_fn({"params": state.params}, x, key)
  )
  z = mu + np.exp(0.5 * logvar) * np.asarray(jax.random.normal(key, mu.shape), np.float64)
  # log q(z_i,l | x_j) for all pairs, then Chen et al.'s estimates with N = 1000, B = 6.
  log_q_ijl = stats.norm.logpdf(z[:, None], mu[None], np.exp(0.5 * logvar[None]))
  log_nb = np.log(6 * 1000)
  log_qz = special.logsumexp(log_q_ijl.sum(-1), axis=1) - log_nb
  log_prod = (special.logsumexp(log_q_ijl, axis=1) - log_nb).sum(-1)
  log_qz_x = stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  log_pz = stats.norm.logpdf(z).sum(-1)
  mi, tc, dwkl = (log_qz_x - log_qz).sum(), (log_qz - log_prod).sum(), (log_prod - log_pz).sum()
  bce = losses.bce_per_example(jnp.asarray(logits, jnp.float32), x).sum()
  for name, value in (("mi", mi), ("tc", tc), ("dwkl", dwkl)):
    np.testing.assert_allclose(terms[name], value, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(loss, bce + mi + 3.0 * tc + dwkl, rtol=1e-5)
  # The three terms add up to the sampled KL, log q(z|x) - log p(z), whatever their split.
  np.testing.assert_allclose(
    terms["mi"] + terms["tc"] + terms["dwkl"], (log_qz_x - log_pz).sum(), rtol=1e-4
  )
