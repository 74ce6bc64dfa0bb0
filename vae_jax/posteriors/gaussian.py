"""The diagonal Gaussian posterior N(mu, diag exp(logvar)): the reference's, the default, and
the base distribution of the flows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.posteriors import Posterior, register_posterior


def reparameterize(mu_BxL: jax.Array, logvar_BxL: jax.Array, eps_BxL: jax.Array) -> jax.Array:
  """z = mu + exp(0.5 * logvar) * eps: the sample is differentiable in mu and logvar."""
  return mu_BxL + jnp.exp(0.5 * logvar_BxL) * eps_BxL


def gaussian_draws(mu_BxL, logvar_BxL, key, num_samples: int):
  """(z_KxBxL, log q(z|x)_KxB): eps = normal(key, K x B x L) (key None: zeros, z = mu)."""
  shape = (num_samples, *mu_BxL.shape)
  eps_KxBxL = jnp.zeros(shape) if key is None else jax.random.normal(key, shape)
  z_KxBxL = reparameterize(mu_BxL, logvar_BxL, eps_KxBxL)
  return z_KxBxL, losses.gaussian_log_density(z_KxBxL, mu_BxL, logvar_BxL)


@register_posterior("gaussian")
class Gaussian(Posterior):
  """q(z|x) = N(mu, diag exp(logvar)); its KL to N(0, I) is closed-form (the reference's)."""

  gaussian = True
  density = True

  def __call__(self, mu_BxL, logvar_BxL, h_BxH, key, num_samples):
    return gaussian_draws(mu_BxL, logvar_BxL, key, num_samples)

  def log_prob(self, mu_BxL, logvar_BxL, h_BxH, z_KxBxL):
    return losses.gaussian_log_density(z_KxBxL, mu_BxL, logvar_BxL)

  def kl(self, mu_BxL, logvar_BxL, h_BxH, prior):
    return losses.kl_per_example(mu_BxL, logvar_BxL) if prior.standard else None


class Flow(Posterior):
  """A normalizing flow on the Gaussian: z_T = f_T o ... o f_1(z_0), z_0 ~ N(mu, exp(logvar)),
  log q(z_T|x) = log q0(z_0|x) - sum_t log|det df_t/dz|. Subclasses implement
  ``transform(z0_KxBxL, h_BxH) -> (zT_KxBxL, log|det|_KxB)`` (length 0: the identity)."""

  length: int = 1

  def transform(self, z_KxBxL, h_BxH):
    raise NotImplementedError

  def __call__(self, mu_BxL, logvar_BxL, h_BxH, key, num_samples):
    z0_KxBxL, log_q0_KxB = gaussian_draws(mu_BxL, logvar_BxL, key, num_samples)
    if not self.length:
      return z0_KxBxL, log_q0_KxB
    z_KxBxL, logdet_KxB = self.transform(z0_KxBxL, h_BxH)
    return z_KxBxL, log_q0_KxB - logdet_KxB

  def check(self):
    from vae_jax.registry import ConfigError

    if self.length < 0:
      raise ConfigError(f"config.posterior.length={self.length}: expected an integer >= 0")
