"""A mixture of Gaussians prior with learned means and variances (uniform weights), and the
mixture machinery the VampPrior shares."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.priors import Prior, register_prior
from vae_jax.registry import ConfigError


class Mixture(Prior):
  """p(z) = 1/K sum_k N(z; m_k, diag exp(s_k)) for the (m, s) that ``components`` gives."""

  num_components: int = 10

  def check(self):
    if self.num_components < 1:
      raise ConfigError(
        f"config.prior.num_components={self.num_components}: expected an integer >= 1"
      )

  def components(self, encode):
    """(means_KxL, logvars_KxL)."""
    raise NotImplementedError

  def log_prob(self, z_NxL, encode=None):
    means_KxL, logvars_KxL = self.components(encode)
    log_N_NxK = losses.gaussian_log_density(z_NxL[..., None, :], means_KxL, logvars_KxL)
    return jax.nn.logsumexp(log_N_NxK, -1) - jnp.log(self.num_components)

  def sample(self, key, num, encode=None):
    means_KxL, logvars_KxL = self.components(encode)
    key_k, key_z = jax.random.split(key)
    k_N = jax.random.randint(key_k, (num,), 0, self.num_components)
    eps_NxL = jax.random.normal(key_z, (num, self.latent_dim))
    return means_KxL[k_N] + jnp.exp(0.5 * logvars_KxL[k_N]) * eps_NxL


@register_prior("mog")
class MixtureOfGaussians(Mixture):
  """Means start at N(0, init_scale^2), log-variances at 0; both trained with the model
  (Tomczak & Welling (2018)'s 'MoG' row)."""

  init_scale: float = 1.0

  def setup(self):
    shape = (self.num_components, self.latent_dim)
    self.means = self.param(
      "means", lambda key, s: self.init_scale * jax.random.normal(key, s), shape
    )
    self.logvars = self.param("logvars", nn.initializers.zeros, shape)

  def components(self, encode=None):
    return self.means, self.logvars
