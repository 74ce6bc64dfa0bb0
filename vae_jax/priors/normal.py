"""The standard normal prior N(0, I): the reference's, and the default."""

from __future__ import annotations

import jax

from vae_jax import losses
from vae_jax.priors import Prior, register_prior


@register_prior("normal")
class StandardNormal(Prior):
  """p(z) = N(0, I); sample draws normal(key, (num, L)) exactly as the reference does."""

  standard = True

  def log_prob(self, z_NxL, encode=None):
    return losses.gaussian_log_density(z_NxL, 0.0, 0.0)

  def sample(self, key, num, encode=None):
    return jax.random.normal(key, (num, self.latent_dim))
