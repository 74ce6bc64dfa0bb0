"""Inverse autoregressive flow (Kingma et al., 2016), conditioned on the encoder's h.

Each step: [m, s] = MADE(z, h), sigma = sigmoid(s + forget_bias), z <- sigma z + (1 - sigma) m,
log|det| = sum log sigma (the Jacobian is triangular: m_i and s_i depend on z_<i only); the
order of the units is reversed between steps. The paper's Algorithm 1 with its numerically
stable (LSTM-type) update; ``forget_bias`` starts sigma near 1 (the identity), as its code does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.posteriors import register_posterior
from vae_jax.posteriors.gaussian import Flow


def made_masks(dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
  """MADE's masks (Germain et al., 2015) for units ordered 1..dim: (in->hidden DxH,
  hidden->out HxD); output i sees inputs < i only."""
  degree_in = np.arange(1, dim + 1)
  degree_hidden = np.arange(hidden) % max(dim - 1, 1) + 1
  return (
    (degree_hidden[None, :] >= degree_in[:, None]).astype(np.float32),
    (degree_in[None, :] > degree_hidden[:, None]).astype(np.float32),
  )


class Made(nn.Module):
  """(m, s)_KxBxL autoregressive in z_KxBxL, with the context h_BxH added to the hidden layer."""

  hidden_dim: int

  def masked(self, name: str, x, mask: np.ndarray):
    kernel = self.param(f"{name}_kernel", nn.initializers.lecun_normal(), mask.shape)
    bias = self.param(f"{name}_bias", nn.initializers.zeros, mask.shape[1:])
    return x @ (kernel * mask) + bias

  @nn.compact
  def __call__(self, z_KxBxL, h_BxH):
    mask_in, mask_out = made_masks(z_KxBxL.shape[-1], self.hidden_dim)
    hidden = self.masked("hidden", z_KxBxL, mask_in)
    hidden = jax.nn.elu(hidden + nn.Dense(self.hidden_dim, name="context")(h_BxH))
    return self.masked("m", hidden, mask_out), self.masked("s", hidden, mask_out)


@register_posterior("iaf")
class IAF(Flow):
  """length: IAF steps; hidden_dim: each MADE's hidden units; forget_bias: added to s."""

  length: int = 2
  hidden_dim: int = 320
  forget_bias: float = 1.0

  @nn.compact
  def transform(self, z_KxBxL, h_BxH):
    logdet_KxB = jnp.zeros(z_KxBxL.shape[:-1])
    for t in range(self.length):
      if t:
        z_KxBxL = z_KxBxL[..., ::-1]
      m, s = Made(self.hidden_dim, name=f"made_{t}")(z_KxBxL, h_BxH)
      sigma = jax.nn.sigmoid(s + self.forget_bias)
      z_KxBxL = sigma * z_KxBxL + (1.0 - sigma) * m
      logdet_KxB = logdet_KxB + jnp.sum(jax.nn.log_sigmoid(s + self.forget_bias), -1)
    return z_KxBxL, logdet_KxB
