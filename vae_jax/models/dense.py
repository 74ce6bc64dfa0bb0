"""``dense``: fully connected layers of any widths, plain or gated, for the papers' networks.

The encoder is x -> hidden_dims -> (mu, logvar), the decoder z -> reversed(hidden_dims) ->
logits. Davidson et al. (2018)'s hyperspherical VAE uses 784-256-128 with ReLU
(``hidden_dims=(256, 128)``); Tomczak & Welling (2018)'s VampPrior VAE two gated dense layers
of 300 (``hidden_dims=(300, 300), gated=True``): h = (W x + b) * sigmoid(V x + c), its
log-variance head clipped to [-6, 2] as the paper's code clips it (a hard-tanh).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.models import VAE, register_model
from vae_jax.models.mlp import ACTIVATIONS, hidden_features
from vae_jax.registry import ConfigError

LOGVAR_LIMITS = (-6.0, 2.0)  # The VampPrior code's hard-tanh on the encoder's log-variance.


def dense_layers(h, widths, activation: str, gated: bool, dtype):
  """Dense layers of these widths: activation(W h + b), or gated (W h + b) * sigmoid(V h + c)."""
  for i, width in enumerate(widths):
    out = nn.Dense(width, dtype=dtype, name=f"hidden_{i}")(h)
    if gated:
      h = out * jax.nn.sigmoid(nn.Dense(width, dtype=dtype, name=f"gate_{i}")(h))
    else:
      h = ACTIVATIONS[activation](out)
  return h


class DenseEncoder(nn.Module):
  hidden_dims: tuple[int, ...]
  latent_dim: int
  activation: str
  gated: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, with_hidden: bool = False):
    h_BxH = dense_layers(
      x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1),
      self.hidden_dims,
      self.activation,
      self.gated,
      self.dtype,
    )
    mu_BxL = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")(h_BxH)
    logvar_BxL = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(h_BxH)
    if self.gated:
      logvar_BxL = jnp.clip(logvar_BxL, *LOGVAR_LIMITS)
    return (mu_BxL, logvar_BxL, h_BxH) if with_hidden else (mu_BxL, logvar_BxL)


class DenseDecoder(nn.Module):
  hidden_dims: tuple[int, ...]
  output_dim: int
  activation: str
  gated: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxL):
    h = dense_layers(z_BxL, self.hidden_dims[::-1], self.activation, self.gated, self.dtype)
    return nn.Dense(self.output_dim, dtype=self.dtype, name="logits")(h)


@register_model("dense")
class Dense(VAE):
  """hidden_dims: the encoder's layer widths (the decoder mirrors them); activation: relu,
  tanh or softplus; gated: gated dense layers (Dauphin et al.'s gates, as the VampPrior
  paper) instead of the activation. Flax's init (lecun_normal, zero biases)."""

  hidden_dims: tuple[int, ...] = (256, 128)
  activation: str = "relu"
  gated: bool = False

  def check(self):
    if self.activation not in ACTIVATIONS:
      raise ConfigError(
        f"config.model.activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}"
      )
    if not self.hidden_dims or min(self.hidden_dims) < 1:
      raise ConfigError(
        f"config.model.hidden_dims={tuple(self.hidden_dims)}: expected one or more widths >= 1"
      )

  def make_encoder(self):
    return DenseEncoder(
      tuple(self.hidden_dims), self.latent_dim, self.activation, self.gated, self.dtype
    )

  def make_decoder(self):
    return DenseDecoder(
      tuple(self.hidden_dims),
      math.prod(self.output_shape),
      self.activation,
      self.gated,
      self.dtype,
    )

  def encode_features(self, x_BxHxWxC):
    return hidden_features(self.encoder, x_BxHxWxC)
