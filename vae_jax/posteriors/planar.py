"""Planar flows (Rezende & Mohamed, 2015), their parameters amortized by the encoder.

f(z) = z + u_hat tanh(w.z + b), log|det df/dz| = log|1 + u_hat.psi|, psi = (1 - tanh^2) w;
u_hat = u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + softplus(a) keeps f invertible
(the paper's appendix). Every step's (u, w, b) is a linear function of the encoder's last
hidden layer h, as the paper amortizes them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.posteriors import register_posterior
from vae_jax.posteriors.gaussian import Flow


def planar_step(z_KxBxL, u_BxL, w_BxL, b_B):
  """(f(z)_KxBxL, log|det df/dz|_KxB) of one invertible planar step."""
  wu_B = jnp.sum(w_BxL * u_BxL, -1)
  scale_B = (jax.nn.softplus(wu_B) - 1.0 - wu_B) / (jnp.sum(w_BxL * w_BxL, -1) + 1e-8)
  u_hat_BxL = u_BxL + scale_B[:, None] * w_BxL
  tanh_KxB = jnp.tanh(jnp.sum(z_KxBxL * w_BxL, -1) + b_B)
  z_KxBxL = z_KxBxL + u_hat_BxL * tanh_KxB[..., None]
  psi_u_KxB = (1.0 - tanh_KxB**2) * jnp.sum(w_BxL * u_hat_BxL, -1)
  return z_KxBxL, jnp.log(jnp.abs(1.0 + psi_u_KxB))


@register_posterior("planar")
class Planar(Flow):
  """length: the number of planar steps (the paper's K: 10, 20, 40, 80)."""

  length: int = 10

  @nn.compact
  def transform(self, z_KxBxL, h_BxH):
    dim = self.latent_dim
    params_BxTxP = nn.Dense(self.length * (2 * dim + 1), name="amortize")(h_BxH).reshape(
      h_BxH.shape[0], self.length, 2 * dim + 1
    )
    logdet_KxB = jnp.zeros(z_KxBxL.shape[:-1])
    for t in range(self.length):
      u, w, b = params_BxTxP[:, t, :dim], params_BxTxP[:, t, dim:-1], params_BxTxP[:, t, -1]
      z_KxBxL, logdet = planar_step(z_KxBxL, u, w, b)
      logdet_KxB = logdet_KxB + logdet
    return z_KxBxL, logdet_KxB
