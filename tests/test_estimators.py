"""MIWAE, PIWAE, CIWAE and DReG (vae_jax/estimators): each against the bounds it reduces to,
jax.grad of each bound separately, and the IWAE gradient's expectation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_model

from vae_jax import config as config_lib, objectives
from vae_jax.estimators import INFERENCE
from vae_jax.registry import ConfigError

SHAPE = (6, 1, 1)
SMALL = {"model.latent_dim": 2, "model.hidden_dim": 8}


@functools.cache
def _cached(name, settings):
  state, _, fn, hparams = make_model(
    {**SMALL, "objective.name": name, **{f"objective.{k}": v for k, v in settings}},
    image_shape=SHAPE,
  )
  return state.params, state.apply_fn, fn, hparams


def _objective(name, **settings):
  """(params, apply_fn, fn, hparams) of a tiny mlp under that objective (the same params for
  every objective: the seed's)."""
  return _cached(name, tuple(sorted(settings.items())))


def _x(n=5, seed=0):
  return jnp.asarray((np.random.RandomState(seed).rand(n, *SHAPE) < 0.5).astype(np.float32))


def _loss(name, key, **settings):
  params, apply_fn, fn, hparams = _objective(name, **settings)
  return fn(params, apply_fn, _x(), key, hparams)


def test_miwae_with_one_group_is_iwae_and_with_one_sample_the_m_sample_elbo():
  key = jax.random.key(1)
  np.testing.assert_allclose(
    _loss("miwae", key, num_groups=1, num_samples=6)[0],
    _loss("iwae", key, num_samples=6)[0],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    _loss("miwae", key, num_groups=6, num_samples=1)[0],
    _loss("vae_k", key, num_samples=6)[0],
    rtol=1e-6,
  )


def test_ciwae_at_beta_one_is_the_elbo_and_at_zero_the_iwae():
  key = jax.random.key(2)
  for beta, same in ((1.0, "vae_k"), (0.0, "iwae")):
    np.testing.assert_allclose(
      _loss("ciwae", key, num_samples=5, beta=beta)[0],
      _loss(same, key, num_samples=5)[0],
      rtol=1e-6,
    )
  halfway = _loss("ciwae", key, num_samples=5, beta=0.5)[0]
  expected = 0.5 * (_loss("vae_k", key, num_samples=5)[0] + _loss("iwae", key, num_samples=5)[0])
  np.testing.assert_allclose(halfway, expected, rtol=1e-6)


def _grads(name, key, **settings):
  params, apply_fn, fn, hparams = _objective(name, **settings)
  return jax.grad(lambda p: fn(p, apply_fn, _x(), key, hparams)[0])(params)


def _group(tree, inference: bool):
  return {k: v for k, v in tree.items() if (k in INFERENCE) == inference}


def test_piwae_gives_each_network_the_gradient_of_its_own_bound():
  key = jax.random.key(3)
  piwae = _grads("piwae", key, num_groups=3, num_samples=4)
  miwae = _grads("miwae", key, num_groups=3, num_samples=4)
  iwae = _grads("iwae", key, num_samples=12)  # IWAE_{MK} over the same 12 draws.
  chex.assert_trees_all_close(_group(piwae, True), _group(miwae, True), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(_group(piwae, False), _group(iwae, False), rtol=1e-5, atol=1e-6)
  # And its reported loss is -IWAE_{MK}, its miwae metric -MIWAE(M, K).
  loss, metrics = _loss("piwae", key, num_groups=3, num_samples=4)
  np.testing.assert_allclose(metrics["loss"], _loss("iwae", key, num_samples=12)[0], rtol=1e-6)
  np.testing.assert_allclose(
    metrics["miwae"], _loss("miwae", key, num_groups=3, num_samples=4)[0], rtol=1e-6
  )
  np.testing.assert_allclose(loss, metrics["loss"] + metrics["miwae"], rtol=1e-6)


def test_dreg_is_the_iwae_bound_with_the_iwae_decoder_gradient():
  key = jax.random.key(4)
  _, metrics = _loss("iwae_dreg", key, num_samples=7)
  np.testing.assert_allclose(metrics["loss"], _loss("iwae", key, num_samples=7)[0], rtol=1e-6)
  dreg, iwae = _grads("iwae_dreg", key, num_samples=7), _grads("iwae", key, num_samples=7)
  chex.assert_trees_all_close(_group(dreg, False), _group(iwae, False), rtol=1e-5, atol=1e-6)


def test_dregs_encoder_gradient_has_the_iwae_expectation_and_a_lower_variance_at_k_50():
  draws = 400
  keys = jax.random.split(jax.random.key(5), draws)
  out = {}
  for name in ("iwae", "iwae_dreg"):
    params, apply_fn, fn, hparams = _objective(name, num_samples=50)
    x = _x(1, seed=3)

    def encoder_grad(key):
      grads = jax.grad(lambda p: fn(p, apply_fn, x, key, hparams)[0])(params)
      return jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads["encoder"])])

    out[name] = np.asarray(jax.jit(jax.vmap(encoder_grad))(keys), np.float64)
  mean_i, mean_d = out["iwae"].mean(0), out["iwae_dreg"].mean(0)
  se = np.sqrt(out["iwae"].var(0) / draws + out["iwae_dreg"].var(0) / draws)
  big = se > 1e-6  # Parameters whose gradient is not identically 0.
  z = np.abs(mean_i - mean_d)[big] / se[big]
  assert np.mean(z < 3) > 0.95 and z.max() < 6  # The same expectation, within the noise.
  assert out["iwae_dreg"].var(0)[big].sum() < 0.5 * out["iwae"].var(0)[big].sum()


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      {"objective.name": "iwae_dreg", "posterior.name": "planar"},
      "config.objective.name='iwae_dreg': needs log q(z|x) at any z",
    ),
    ({"objective.name": "miwae", "objective.num_groups": 0}, "config.objective.num_groups=0"),
    ({"objective.name": "ciwae", "objective.beta": 1.5}, "config.objective.beta=1.5"),
  ],
)
def test_bad_estimator_settings_are_one_config_error(overrides, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    objectives.make_hparams(config_lib.parse(config_lib.from_flat(overrides)).objective)
