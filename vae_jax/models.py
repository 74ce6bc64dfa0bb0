"""The reference MNIST VAE as thin flax.linen modules.

Layers and the reparameterization only; losses and the loop live in losses.py / train.py.
The decoder returns logits: the loss uses the stable logits form of BCE and images apply
the sigmoid, which is the same model as the reference's sigmoid output layer.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ("torch", "flax")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.compute_dtype


def torch_linear_init(fan_in: int) -> tuple[Callable, Callable]:
  """PyTorch nn.Linear's init: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5) gives exactly this bound for the weights.)
  """
  bound = 1.0 / jnp.sqrt(fan_in)

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return uniform, uniform


def dense(features: int, fan_in: int, init: str, name: str, dtype=jnp.float32) -> nn.Dense:
  """A Dense layer with the named init: 'torch' (the reference) or 'flax' (lecun_normal/zeros).

  Parameters are float32; ``dtype`` is what the layer computes in (bfloat16: mixed precision).
  """
  if init == "torch":
    kernel_init, bias_init = torch_linear_init(fan_in)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, name=name, dtype=dtype)
  if init == "flax":
    return nn.Dense(features, name=name, dtype=dtype)
  raise ValueError(f"init {init!r}: expected one of {INITS}")


def _hidden_name(i: int) -> str:
  """'hidden', 'hidden_2', ...: the reference's single layer keeps its name."""
  return "hidden" if i == 0 else f"hidden_{i + 1}"


class Encoder(nn.Module):
  """x_BxD -> (mu_BxL, logvar_BxL) (float32) through num_hidden_layers ReLU layers."""
  hidden_dim: int = 400
  latent_dim: int = 20
  init_scheme: str = "torch"
  dtype: jnp.dtype = jnp.float32
  num_hidden_layers: int = 1

  @nn.compact
  def __call__(self, x_BxD):
    layer = lambda n, fan_in, name: dense(n, fan_in, self.init_scheme, name, self.dtype)
    h_BxH = x_BxD
    for i in range(self.num_hidden_layers):
      h_BxH = nn.relu(layer(self.hidden_dim, h_BxH.shape[-1], _hidden_name(i))(h_BxH))
    mu_BxL = layer(self.latent_dim, self.hidden_dim, "mu")(h_BxH)
    logvar_BxL = layer(self.latent_dim, self.hidden_dim, "logvar")(h_BxH)
    return mu_BxL.astype(jnp.float32), logvar_BxL.astype(jnp.float32)


class Decoder(nn.Module):
  """z_BxL -> logits_BxD (float32) through num_hidden_layers ReLU layers; sigmoid(logits) is the image."""
  hidden_dim: int = 400
  output_dim: int = 784
  init_scheme: str = "torch"
  dtype: jnp.dtype = jnp.float32
  num_hidden_layers: int = 1

  @nn.compact
  def __call__(self, z_BxL):
    layer = lambda n, fan_in, name: dense(n, fan_in, self.init_scheme, name, self.dtype)
    h_BxH = z_BxL
    for i in range(self.num_hidden_layers):
      h_BxH = nn.relu(layer(self.hidden_dim, h_BxH.shape[-1], _hidden_name(i))(h_BxH))
    return layer(self.output_dim, self.hidden_dim, "logits")(h_BxH).astype(jnp.float32)


def reparameterize(mu_BxL, logvar_BxL, eps_BxL):
  """z = mu + exp(0.5 * logvar) * eps: the sample is differentiable in mu and logvar."""
  return mu_BxL + jnp.exp(0.5 * logvar_BxL) * eps_BxL


class VAE(nn.Module):
  """The reference VAE: 784-400-(20, 20) encoder, 20-400-784 decoder, ReLU.

  ``__call__(x_BxD, key)`` returns ``(logits_BxD, mu_BxL, logvar_BxL)``. The noise is
  ``eps_BxL = jax.random.normal(key, mu_BxL.shape)``, drawn from the caller's explicit key
  inside the traced graph; ``key=None`` gives the deterministic z = mu. ``dtype``: what the
  layers compute in; parameters, outputs, noise and the loss stay float32.
  ``learned_sigma`` adds a per-pixel ``log_sigma`` parameter (Gaussian likelihood with
  learned variance; losses.nll_per_example reads it from the params).
  """
  hidden_dim: int = 400
  latent_dim: int = 20
  output_dim: int = 784
  init_scheme: str = "torch"
  dtype: jnp.dtype = jnp.float32
  num_hidden_layers: int = 1
  learned_sigma: bool = False

  def setup(self):
    self.encoder = Encoder(self.hidden_dim, self.latent_dim, self.init_scheme, self.dtype,
                           self.num_hidden_layers)
    self.decoder = Decoder(self.hidden_dim, self.output_dim, self.init_scheme, self.dtype,
                           self.num_hidden_layers)
    if self.learned_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, (self.output_dim,))

  def __call__(self, x_BxD, key: jax.Array | None = None):
    mu_BxL, logvar_BxL = self.encoder(x_BxD)
    if key is None:
      z_BxL = mu_BxL
    else:
      eps_BxL = jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype)
      z_BxL = reparameterize(mu_BxL, logvar_BxL, eps_BxL)
    return self.decoder(z_BxL), mu_BxL, logvar_BxL

  def encode(self, x_BxD):
    return self.encoder(x_BxD)

  def decode(self, z_BxL):
    return self.decoder(z_BxL)

  def generate(self, z_BxL):
    """Images in [0, 1]: sigmoid of the decoder's logits."""
    return nn.sigmoid(self.decoder(z_BxL))
