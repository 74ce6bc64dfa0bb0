"""The VampPrior (Tomczak & Welling, 2018): p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs.

The pseudo-inputs are parameters of the prior (K x H x W x C), trained with the model; each
u_k passes through the model's own encoder, so the prior moves with it. As the paper's code
they start at N(0.05, 0.01^2) and are clipped to [0, 1] (its hard-tanh). With a posterior
that is not a diagonal Gaussian, the components are the encoder's Gaussian part q0(z|u_k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.priors import Prior, register_prior
from vae_jax.registry import ConfigError


@register_prior("vamp")
class VampPrior(Prior):
  """num_components: K (500 in the paper); init_mean / init_std: the pseudo-inputs' init."""

  unit_inputs = True

  num_components: int = 500
  init_mean: float = 0.05
  init_std: float = 0.01

  def check(self):
    if self.num_components < 1:
      raise ConfigError(
        f"config.prior.num_components={self.num_components}: expected an integer >= 1"
      )

  def setup(self):
    self.raw_inputs = self.param(
      "pseudo_inputs",
      lambda key, s: self.init_mean + self.init_std * jax.random.normal(key, s),
      (self.num_components, *self.image_shape),
    )

  def pseudo_inputs(self):
    """u_KxHxWxC in [0, 1]."""
    return jnp.clip(self.raw_inputs, 0.0, 1.0)

  def components(self, encode):
    return encode(self.pseudo_inputs())

  def log_prob(self, z_NxL, encode):
    mu_KxL, logvar_KxL = self.components(encode)
    log_q_NxK = losses.gaussian_log_density(z_NxL[..., None, :], mu_KxL, logvar_KxL)
    return jax.nn.logsumexp(log_q_NxK, -1) - jnp.log(self.num_components)

  def sample(self, key, num, encode):
    mu_KxL, logvar_KxL = self.components(encode)
    key_k, key_z = jax.random.split(key)
    k_N = jax.random.randint(key_k, (num,), 0, self.num_components)
    eps_NxL = jax.random.normal(key_z, (num, self.latent_dim))
    return mu_KxL[k_N] + jnp.exp(0.5 * logvar_KxL[k_N]) * eps_NxL
