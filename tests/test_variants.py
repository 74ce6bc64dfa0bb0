"""Ablation objectives against independent numpy / scipy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vae_jax import losses, models, train
from vae_jax.configs import default


@pytest.mark.parametrize("lam", [0.01, 0.2, 0.45, 0.495, 0.5, 0.503, 0.7, 0.99])
def test_continuous_bernoulli_normaliser_matches_the_integral(lam):
  integral, _ = integrate.quad(lambda x: lam**x * (1 - lam) ** (1 - x), 0.0, 1.0)
  np.testing.assert_allclose(losses.continuous_bernoulli_log_norm(jnp.float32(lam)),
                             -np.log(integral), rtol=1e-5)


def test_continuous_bernoulli_nll_is_minus_log_density():
  rs = np.random.RandomState(0)
  logits, x = rs.randn(3, 7).astype(np.float32), rs.rand(3, 7).astype(np.float32)
  lam = 1 / (1 + np.exp(-logits.astype(np.float64)))
  log_c = np.array([[-np.log(integrate.quad(lambda t: l**t * (1 - l) ** (1 - t), 0, 1)[0])
                     for l in row] for row in lam])
  log_p = x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c
  np.testing.assert_allclose(losses.nll_per_example(logits, x, "continuous_bernoulli"),
                             -log_p.sum(-1), rtol=1e-4)


def test_gaussian_nll_matches_scipy():
  rs = np.random.RandomState(1)
  logits, x = rs.randn(4, 6).astype(np.float32), rs.rand(4, 6).astype(np.float32)
  log_sigma = rs.randn(6).astype(np.float32) * 0.3
  mean = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = -stats.norm.logpdf(x, mean, np.exp(log_sigma)).sum(-1)
  np.testing.assert_allclose(losses.nll_per_example(logits, x, "gaussian", log_sigma), expected,
                             rtol=1e-5)


def test_free_bits_floors_each_dimension_at_lambda():
  rs = np.random.RandomState(2)
  mu, logvar = rs.randn(5, 4).astype(np.float32) * [0.01, 1, 2, 0.1], rs.randn(5, 4).astype(np.float32) * 0.1
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
  config = default.get_config()
  config.update({"hidden_dim": 16, "latent_dim": 3, **values})
  return config, train.create_train_state(config, jax.random.key(0), input_dim=12)


def test_iwae_training_loss_is_minus_the_summed_bound():
  config, state = _state(iwae_samples=4)
  x = jnp.asarray(np.random.RandomState(4).rand(5, 12), jnp.float32)
  key = jax.random.key(9)
  loss, _ = train.loss_fn(state.params, state.apply_fn, x, key, 1.0, train.Objective.from_config(config))
  p = jax.device_get(state.params)
  dense = lambda h, layer: h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"])
  h = np.maximum(dense(np.asarray(x, np.float64), p["encoder"]["hidden"]), 0)
  mu, logvar = dense(h, p["encoder"]["mu"]), dense(h, p["encoder"]["logvar"])
  eps = np.asarray(jax.random.normal(key, (4, 5, 3)), np.float64)
  z = mu + np.exp(0.5 * logvar) * eps
  logits = dense(np.maximum(dense(z, p["decoder"]["hidden"]), 0), p["decoder"]["logits"])
  log_px = -(np.maximum(logits, 0) - logits * np.asarray(x) + np.log1p(np.exp(-np.abs(logits)))).sum(-1)
  log_w = log_px + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  expected = -(special.logsumexp(log_w, axis=0) - np.log(4)).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_autoencoder_reconstructs_from_the_mean_and_has_no_kl():
  config, state = _state(model="ae")
  x = jnp.asarray(np.random.RandomState(5).rand(5, 12), jnp.float32)
  objective = train.Objective.from_config(config)
  loss, terms = train.loss_fn(state.params, state.apply_fn, x, jax.random.key(1), 1.0, objective)
  logits, _, _ = state.apply_fn({"params": state.params}, x, None)
  np.testing.assert_allclose(loss, losses.bce_per_example(logits, x).sum(), rtol=1e-6)
  assert float(terms["kl"]) == 0.0
  grads = jax.grad(lambda p: train.loss_fn(p, state.apply_fn, x, jax.random.key(1), 1.0, objective)[0])(
      state.params)
  assert not np.any(np.asarray(grads["encoder"]["logvar"]["kernel"]))  # The variance head is unused.


def test_learned_sigma_and_depth_add_parameters():
  _, state = _state(likelihood="gaussian", gaussian_sigma=0.0, num_hidden_layers=2)
  assert state.params["log_sigma"].shape == (12,)
  assert state.params["encoder"]["hidden_2"]["kernel"].shape == (16, 16)
  assert state.params["decoder"]["hidden_2"]["kernel"].shape == (16, 16)
  _, fixed = _state(likelihood="gaussian", gaussian_sigma=0.1)
  assert "log_sigma" not in fixed.params


@pytest.mark.parametrize("values", [
    {"likelihood": "continuous_bernoulli"}, {"likelihood": "gaussian", "gaussian_sigma": 0.0},
    {"likelihood": "gaussian", "gaussian_sigma": 0.1}, {"free_bits": 0.5}, {"iwae_samples": 3},
    {"model": "ae"}, {"num_hidden_layers": 2}, {"corruption": "gaussian", "corruption_level": 0.3},
    {"corruption": "mask", "corruption_level": 0.5},
])
def test_each_variant_trains_end_to_end(small_config, small_splits, tmp_path, values):
  small_config.update({"num_epochs": 1, "save_images": False, **values})
  state, records = train.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  assert all(np.isfinite(records[0][k]) for k in ("train_loss", "test_loss", "test_bce"))
  if values.get("model") == "ae":
    assert records[0]["test_kl"] == 0.0
  for leaf in jax.tree.leaves(state.params):
    assert leaf.dtype == jnp.float32


def test_unknown_variant_values_are_refused(small_config):
  for key, value, message in [("likelihood", "poisson", "config.likelihood='poisson'"),
                              ("model", "gan", "config.model='gan'"),
                              ("iwae_samples", 0, "config.iwae_samples=0"),
                              ("free_bits", -1.0, "config.free_bits=-1.0"),
                              ("corruption", "blur", "config.corruption='blur'"),
                              ("corruption_level", -0.1, "config.corruption_level=-0.1")]:
    config = default.get_config()
    config[key] = value
    with pytest.raises(train.ConfigError, match=message):
      train.validate_config(config)
  assert models.VAE().learned_sigma is False


def test_a_masked_fraction_of_one_is_refused():
  config = default.get_config()
  config.update(corruption="mask", corruption_level=1.0)
  with pytest.raises(train.ConfigError, match="corruption_level=1.0.*< 1"):
    train.validate_config(config)


def test_corruptions_add_clipped_noise_or_zero_a_fraction_of_pixels():
  x = jnp.full((400, 500), 0.5, jnp.float32)
  key = jax.random.key(0)
  noisy = np.asarray(train.corrupt(x, key, "gaussian", 0.1))
  assert abs(noisy.std() - 0.1) < 0.002 and abs(noisy.mean() - 0.5) < 0.002
  black = np.asarray(train.corrupt(jnp.zeros((100, 100)), key, "gaussian", 0.5))
  assert black.min() == 0.0 and black.max() <= 1.0 and (black == 0).mean() > 0.45  # Clipped.
  masked = np.asarray(train.corrupt(x, key, "mask", 0.3))
  assert abs((masked == 0).mean() - 0.3) < 0.005
  assert set(np.unique(masked)) == {0.0, 0.5}  # Kept pixels are unchanged.
  np.testing.assert_array_equal(train.corrupt(x, key, "none", 0.3), x)


def test_denoising_loss_encodes_the_corrupted_input_and_scores_the_clean_one():
  config, state = _state(corruption="gaussian", corruption_level=0.3)
  objective = train.Objective.from_config(config)
  x = jnp.asarray(np.random.RandomState(6).rand(5, 12), jnp.float32)
  key = jax.random.key(2)
  loss, terms = train.loss_fn(state.params, state.apply_fn, x, key, 1.0, objective)
  x_in = train.corrupt(x, jax.random.fold_in(key, 2), "gaussian", 0.3)
  logits, mu, logvar = state.apply_fn({"params": state.params}, x_in, key)
  bce = losses.bce_per_example(logits, x).sum()
  np.testing.assert_allclose(terms["bce"], bce, rtol=1e-6)
  np.testing.assert_allclose(loss, bce + losses.kl_per_example(mu, logvar).sum(), rtol=1e-6)
  clean_logits, _, _ = state.apply_fn({"params": state.params}, x, key)
  assert not np.allclose(logits, clean_logits)  # The encoder did see other inputs.
  assert objective.for_evaluation() == train.REFERENCE  # Test losses are on clean inputs.
