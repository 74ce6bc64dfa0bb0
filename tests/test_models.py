"""Module outputs: shapes, dtypes, initialisers and the reparameterization."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import models


def _init(model, batch=5, dim=784):
  return model.init(jax.random.key(0), jnp.zeros((batch, dim)))["params"]


def test_encoder_decoder_vae_shapes_and_dtypes():
  x_BxD = jax.random.uniform(jax.random.key(1), (5, 784))
  mu, logvar = models.Encoder().apply(
      {"params": models.Encoder().init(jax.random.key(0), x_BxD)["params"]}, x_BxD)
  chex.assert_shape([mu, logvar], (5, 20))
  chex.assert_type([mu, logvar], jnp.float32)
  decoder = models.Decoder()
  z_BxL = jnp.ones((5, 20))
  logits = decoder.apply({"params": decoder.init(jax.random.key(0), z_BxL)["params"]}, z_BxL)
  chex.assert_shape(logits, (5, 784))
  vae = models.VAE(hidden_dim=32, latent_dim=3)
  params = _init(vae)
  logits, mu, logvar = vae.apply({"params": params}, x_BxD, jax.random.key(2))
  chex.assert_shape(logits, (5, 784))
  chex.assert_shape([mu, logvar], (5, 3))
  chex.assert_tree_all_finite((logits, mu, logvar))
  images = vae.apply({"params": params}, jnp.zeros((4, 3)), method=models.VAE.generate)
  chex.assert_shape(images, (4, 784))
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_parameter_shapes_follow_the_reference_spec():
  shapes = jax.tree.map(jnp.shape, _init(models.VAE()))
  assert shapes == {
      "encoder": {"hidden": {"kernel": (784, 400), "bias": (400,)},
                  "mu": {"kernel": (400, 20), "bias": (20,)},
                  "logvar": {"kernel": (400, 20), "bias": (20,)}},
      "decoder": {"hidden": {"kernel": (20, 400), "bias": (400,)},
                  "logits": {"kernel": (400, 784), "bias": (784,)}}}


def test_torch_init_is_uniform_within_one_over_sqrt_fan_in():
  params = _init(models.VAE(init_scheme="torch"))
  for layer in jax.tree.leaves(params, is_leaf=lambda p: "kernel" in p):
    fan_in = layer["kernel"].shape[0]
    bound = 1 / np.sqrt(fan_in)
    for w in (layer["kernel"], layer["bias"]):
      w = np.asarray(w)
      assert np.abs(w).max() <= bound
      if w.size >= 400:  # Fills the interval, not a narrower one (P(fail) < 0.9**400).
        assert np.abs(w).max() > 0.9 * bound
  w = np.asarray(params["encoder"]["hidden"]["kernel"])  # 313600 draws: moments of U(-b, b).
  b = 1 / np.sqrt(784)
  assert abs(w.mean()) < 0.01 * b
  assert abs(w.var() - b**2 / 3) < 0.01 * b**2 / 3


def test_flax_init_has_zero_biases_and_lecun_normal_kernels():
  params = _init(models.VAE(init_scheme="flax"))
  assert all(float(jnp.abs(b).max()) == 0 for b in jax.tree.leaves(
      jax.tree.map(lambda layer: layer["bias"], params, is_leaf=lambda p: "bias" in p)))
  w = np.asarray(params["decoder"]["logits"]["kernel"])  # lecun_normal: var 1/fan_in (truncated).
  assert abs(w.std() - 1 / np.sqrt(400)) < 0.05 / np.sqrt(400)


def test_unknown_init_is_refused():
  with pytest.raises(ValueError, match="init 'he'"):
    _init(models.VAE(init_scheme="he"))


def test_reparameterization_uses_the_key_and_none_means_the_mean():
  vae = models.VAE(hidden_dim=16, latent_dim=4)
  params = _init(vae, dim=10)
  x = jax.random.uniform(jax.random.key(3), (6, 10))
  out = lambda key: vae.apply({"params": params}, x, key)[0]
  np.testing.assert_array_equal(out(jax.random.key(7)), out(jax.random.key(7)))
  assert not np.allclose(out(jax.random.key(7)), out(jax.random.key(8)))
  # key=None decodes z = mu exactly.
  mu, _ = vae.apply({"params": params}, x, method=models.VAE.encode)
  np.testing.assert_array_equal(out(None), vae.apply({"params": params}, mu, method=models.VAE.decode))
  # With a key, z = mu + exp(logvar / 2) * eps and eps = normal(key, mu.shape).
  mu, logvar = vae.apply({"params": params}, x, method=models.VAE.encode)
  eps = jax.random.normal(jax.random.key(7), mu.shape)
  z = mu + np.exp(0.5 * logvar) * eps
  np.testing.assert_allclose(out(jax.random.key(7)),
                             vae.apply({"params": params}, z, method=models.VAE.decode), rtol=1e-5, atol=1e-6)
