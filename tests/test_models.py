"""Models by name: shapes, dtypes, initialisers, the reparameterization, registration."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib, models
from vae_jax.registry import ConfigError


def _build(name="mlp", shape=(28, 28, 1), **settings):
  entry = models.REGISTRY.get(name)
  return models.build((entry, {**entry.settings, **settings}), shape)


def _init(model, batch=5):
  return model.init(jax.random.key(0), jnp.zeros((batch, *model.image_shape)))["params"]


@pytest.mark.parametrize("name", sorted(models.REGISTRY.entries))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_model_maps_images_to_latents_and_logits_of_the_image_shape(name, shape):
  vae = _build(name, shape, latent_dim=3)
  params = _init(vae)
  x = jax.random.uniform(jax.random.key(1), (5, *shape))
  given = {"labels": jnp.arange(5) % 2} if vae.conditional else {}
  logits, mu, logvar = vae.apply({"params": params}, x, jax.random.key(2), **given)
  units = sum(vae.latent_layers)
  chex.assert_shape(logits, (5, *shape))
  chex.assert_shape([mu, logvar], (5, units))
  chex.assert_type([logits, mu, logvar], jnp.float32)
  chex.assert_tree_all_finite((logits, mu, logvar))
  labels_4 = {"labels": jnp.arange(4) % 2} if vae.conditional else {}
  images = vae.apply({"params": params}, jnp.zeros((4, 3)), method="generate", **labels_4)
  chex.assert_shape(images, (4, *shape))
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
  # decode takes any leading axes (K samples x B examples).
  chex.assert_shape(
    vae.apply({"params": params}, jnp.zeros((2, 4, units)), method="decode", **labels_4),
    (2, 4, *shape),
  )
  # The latent contract every objective uses: K draws, their log-densities, the prior's draws.
  logits_K, log_p, log_q = vae.apply(
    {"params": params}, x, jax.random.key(3), 2, method="importance_terms", **given
  )
  chex.assert_shape(logits_K, (2, 5, *shape))
  chex.assert_shape([log_p, log_q], (2, 5))
  chex.assert_tree_all_finite((log_p, log_q))
  _, kl, _ = vae.apply({"params": params}, x, jax.random.key(3), method="elbo_terms", **given)
  chex.assert_shape(kl, (5,))
  z = vae.apply({"params": params}, jax.random.key(4), 6, method="sample_prior")
  chex.assert_shape(z, (6, 3))


def test_parameter_shapes_follow_the_reference_spec():
  shapes = jax.tree.map(jnp.shape, _init(_build()))
  assert shapes == {
    "encoder": {
      "hidden": {"kernel": (784, 400), "bias": (400,)},
      "mu": {"kernel": (400, 20), "bias": (20,)},
      "logvar": {"kernel": (400, 20), "bias": (20,)},
    },
    "decoder": {
      "hidden": {"kernel": (20, 400), "bias": (400,)},
      "logits": {"kernel": (400, 784), "bias": (784,)},
    },
  }


def test_torch_init_is_uniform_within_one_over_sqrt_fan_in():
  params = _init(_build(init_scheme="torch"))
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
  params = _init(_build(init_scheme="flax"))
  assert all(
    float(jnp.abs(b).max()) == 0
    for b in jax.tree.leaves(
      jax.tree.map(lambda layer: layer["bias"], params, is_leaf=lambda p: "bias" in p)
    )
  )
  w = np.asarray(params["decoder"]["logits"]["kernel"])  # lecun_normal: var 1/fan_in (truncated).
  assert abs(w.std() - 1 / np.sqrt(400)) < 0.05 / np.sqrt(400)


def test_bad_model_settings_are_one_config_error():
  with pytest.raises(ConfigError, match="config.model.init_scheme='he'"):
    _build(init_scheme="he")
  with pytest.raises(ConfigError, match="H and W divisible by 4; the data's images are 30x30x1"):
    _build("conv", (30, 30, 1))
  with pytest.raises(ConfigError, match="config.model.name='gan': expected one of"):
    config_lib.parse({"model": {"name": "gan"}})
  with pytest.raises(ConfigError, match="config.model.channels=.*does not apply to model 'mlp'"):
    config_lib.parse({"model": {"channels": (8,)}})


def test_reparameterization_uses_the_key_and_none_means_the_mean():
  vae = _build(shape=(2, 5, 1), hidden_dim=16, latent_dim=4)
  params = _init(vae)
  x = jax.random.uniform(jax.random.key(3), (6, 2, 5, 1))
  out = lambda key: vae.apply({"params": params}, x, key)[0]
  np.testing.assert_array_equal(out(jax.random.key(7)), out(jax.random.key(7)))
  assert not np.allclose(out(jax.random.key(7)), out(jax.random.key(8)))
  mu, logvar = vae.apply({"params": params}, x, method="encode")
  np.testing.assert_array_equal(out(None), vae.apply({"params": params}, mu, method="decode"))
  # With a key, z = mu + exp(logvar / 2) * eps and eps = normal(key, mu.shape).
  eps = jax.random.normal(jax.random.key(7), mu.shape)
  z = mu + np.exp(0.5 * logvar) * eps
  np.testing.assert_allclose(
    out(jax.random.key(7)), vae.apply({"params": params}, z, method="decode"), rtol=1e-5, atol=1e-6
  )


def test_a_model_defined_outside_the_package_is_one_subclass_and_a_name():
  class Linear(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(self.features)(x.reshape(x.shape[0], -1))

  class Heads(nn.Module):
    latent_dim: int

    @nn.compact
    def __call__(self, x):
      h = x.reshape(x.shape[0], -1)
      return nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)

  @models.register_model("linear_test")
  class LinearVAE(models.VAE):
    def make_encoder(self):
      return Heads(self.latent_dim)

    def make_decoder(self):
      return Linear(int(np.prod(self.image_shape)))

  try:
    settings = config_lib.parse({"model": {"name": "linear_test", "latent_dim": 2}})
    vae = models.build(settings.model, (4, 4, 1))
    logits, mu, _ = vae.apply({"params": _init(vae)}, jnp.ones((3, 4, 4, 1)), jax.random.key(0))
    chex.assert_shape([logits, mu], [(3, 4, 4, 1), (3, 2)])
  finally:
    del models.REGISTRY.entries["linear_test"]
