"""The uniform prior on the unit sphere S^(L-1) in R^L: the hyperspherical VAE's (Davidson et
al., 2018); pair it with the 'vmf' posterior."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vae_jax.priors import Prior, register_prior


def log_sphere_area(dim: int) -> float:
  """log of the surface area of S^(dim-1) in R^dim: log(2 pi^(dim/2) / Gamma(dim/2))."""
  return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


@register_prior("spherical_uniform")
class SphericalUniform(Prior):
  """p(z) = 1 / area(S^(L-1)) on the unit sphere; samples are normalized Gaussian draws."""

  support = "sphere"

  def log_prob(self, z_NxL, encode=None):
    return jnp.full(z_NxL.shape[:-1], -log_sphere_area(self.latent_dim))

  def sample(self, key, num, encode=None):
    g_NxL = jax.random.normal(key, (num, self.latent_dim))
    return g_NxL / jnp.linalg.norm(g_NxL, axis=-1, keepdims=True)
