"""``conv``: stride-2 convolutions down, their transposes up; any H x W x C divisible by 2^depth."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vae_jax.models import VAE, register_model
from vae_jax.models.mlp import hidden_features
from vae_jax.registry import ConfigError


class ConvEncoder(nn.Module):
  """x_BxHxWxC -> (mu_BxL, logvar_BxL): 3x3 stride-2 ReLU convolutions, then two Dense heads
  (a label y_BxC, given, joins the flattened features: q(z|x, y) of a conditional model)."""

  channels: tuple[int, ...]
  latent_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, y_BxC=None, with_hidden: bool = False):
    """with_hidden: (mu, logvar, h_BxF), h the flattened features (a posterior's context)."""
    h = x_BxHxWxC
    for i, c in enumerate(self.channels):
      h = nn.relu(
        nn.Conv(c, (3, 3), strides=2, padding="SAME", dtype=self.dtype, name=f"conv_{i}")(h)
      )
    h_BxF = h.reshape(h.shape[0], -1)
    if y_BxC is not None:
      h_BxF = jnp.concatenate([h_BxF, y_BxC.astype(h_BxF.dtype)], axis=-1)
    mu_BxL = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")(h_BxF)
    logvar_BxL = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(h_BxF)
    return (mu_BxL, logvar_BxL, h_BxF) if with_hidden else (mu_BxL, logvar_BxL)


class ConvDecoder(nn.Module):
  """z_BxL -> logits_BxHxWxC: Dense to the smallest feature map, then stride-2 transposes."""

  channels: tuple[int, ...]
  image_shape: tuple[int, ...]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxL):
    (height, width, colors), scale = self.image_shape, 2 ** len(self.channels)
    h = nn.Dense(
      height // scale * width // scale * self.channels[-1], dtype=self.dtype, name="dense"
    )(z_BxL)
    h = nn.relu(h).reshape(-1, height // scale, width // scale, self.channels[-1])
    for i, c in enumerate([*self.channels[-2::-1], colors]):
      h = nn.ConvTranspose(
        c, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype, name=f"deconv_{i}"
      )(h)
      h = nn.relu(h) if i < len(self.channels) - 1 else h
    return h


@register_model("conv")
class Conv(VAE):
  """channels: feature maps of the stride-2 convolutions (the decoder mirrors them)."""

  channels: tuple[int, ...] = (16, 32)  # Small enough for ~30 s per MNIST epoch on 2 CPU cores.

  def check(self):
    scale = 2 ** len(self.channels)
    if not self.channels or min(self.channels) < 1:
      raise ConfigError(f"config.model.channels={self.channels}: expected one or more counts >= 1")
    if len(self.image_shape) != 3 or self.image_shape[0] % scale or self.image_shape[1] % scale:
      raise ConfigError(
        f"config.model.name='conv' with {len(self.channels)} stride-2 layers needs "
        f"H x W x C images with H and W divisible by {scale}; the data's images are "
        f"{'x'.join(map(str, self.image_shape))}"
      )

  def make_encoder(self):
    return ConvEncoder(tuple(self.channels), self.latent_dim, self.dtype)

  def make_decoder(self):
    return ConvDecoder(tuple(self.channels), tuple(self.output_shape), self.dtype)

  def encode_features(self, x_BxHxWxC):
    return hidden_features(self.encoder, x_BxHxWxC)
