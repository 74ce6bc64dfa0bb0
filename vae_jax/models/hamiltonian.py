"""``hamiltonian``: the Hamiltonian VAE (Caterini, Doucet & Sejdinovic, 2018) on the mlp.

From z0 ~ q0(z|x) (the encoder's Gaussian) and a momentum rho0 ~ N(0, I / beta0), T leapfrog
steps on U(z) = -log p(x, z) with learned per-unit step sizes eps, each followed by tempering
rho <- sqrt(beta_{t-1} / beta_t) rho on the quadratic schedule 1/sqrt(beta_t) = (1 -
1/sqrt(beta0)) t^2/T^2 + 1/sqrt(beta0) (beta_T = 1, beta0 in (0, 1] learned), give (z_T,
rho_T). Leapfrog keeps volume, the tempering scales it by beta0^(d/2), so the extended space's
importance weight is
  w = p(x, z_T) N(rho_T; 0, I) / [q0(z0|x) N(rho0; 0, I / beta0) beta0^(-d/2)],
whose expectation is p(x): the ELBO (elbo, vae_k) and the importance-weighted bounds (iwae)
take it through ``importance_terms`` with no other change. The gradient of log p(x, z) is
taken inside the training gradient (flax's lifted ``nn.grad``), so training differentiates
through the dynamics. T = 0 is the Gaussian VAE's ELBO exactly (no tempering without steps).
``tempering=False`` keeps beta0 = 1 (plain leapfrog, as Salimans et al. (2015)'s HVI without
its auxiliary inverse model).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import register_model
from vae_jax.models.mlp import MLP
from vae_jax.posteriors.gaussian import gaussian_draws
from vae_jax.registry import ConfigError


def leapfrog(z, rho, step_size, grad_log_p):
  """One leapfrog step of H(z, rho) = -log p(z) + |rho|^2 / 2: (z', rho')."""
  rho = rho + 0.5 * step_size * grad_log_p(z)
  z = z + step_size * rho
  return z, rho + 0.5 * step_size * grad_log_p(z)


def inverse_sqrt_betas(beta0, steps: int):
  """1/sqrt(beta_t) for t = 0..T on the quadratic schedule (beta_T = 1)."""
  t = jnp.arange(steps + 1) / max(steps, 1)
  return (1.0 - 1.0 / jnp.sqrt(beta0)) * t**2 + 1.0 / jnp.sqrt(beta0)


@register_model("hamiltonian")
class Hamiltonian(MLP):
  """mlp's settings, plus leapfrog_steps (T), the initial step size and beta0, tempering."""

  latent_choice = False  # Its own extended posterior over (z, rho).
  gaussian_kl = False  # Its KL is estimated from the sample.

  leapfrog_steps: int = 4
  init_step_size: float = 0.01
  init_beta0: float = 0.3
  tempering: bool = True

  def check(self):
    super().check()
    if self.leapfrog_steps < 0:
      raise ConfigError(
        f"config.model.leapfrog_steps={self.leapfrog_steps}: expected an integer >= 0"
      )
    if not 0.0 < self.init_beta0 <= 1.0 or not self.init_step_size > 0:
      raise ConfigError(
        f"config.model.init_beta0={self.init_beta0}, init_step_size={self.init_step_size}: "
        "expected beta0 in (0, 1] and a step size > 0"
      )
    if self.likelihood in losses.WITH_SIGMA:
      raise ConfigError(
        f"config.objective.likelihood={self.likelihood!r}: model 'hamiltonian' computes "
        "log p(x|z) itself and has no sigma; use bernoulli or continuous_bernoulli"
      )

  def setup(self):
    super().setup()
    self.log_step_size = self.param(
      "log_step_size",
      nn.initializers.constant(math.log(self.init_step_size)),
      (self.latent_dim,),
    )
    logit = math.log(self.init_beta0) - math.log1p(-min(self.init_beta0, 1 - 1e-6))
    self.beta0_logit = self.param("beta0_logit", nn.initializers.constant(logit), ())

  def beta0(self):
    """beta0 in (0, 1): learned with tempering and steps, else 1."""
    if not (self.tempering and self.leapfrog_steps):
      return jnp.float32(1.0)
    return jax.nn.sigmoid(self.beta0_logit)

  def log_joint(self, x_BxHxWxC, z_KxBxL):
    """log p(x, z)_KxB = log p(x|z) + log p(z) under the model's likelihood (no learned sigma)."""
    logits = self.decode(z_KxBxL)
    nll = losses.nll_per_example(logits, x_BxHxWxC[None], self.likelihood, batch_ndim=2)
    return -nll + self.log_prior(z_KxBxL)

  def importance_terms(self, x_BxHxWxC, key, num_samples):
    """(logits at z_T, log p(z_T) + log N(rho_T; 0, I), log q0(z0|x) + log N(rho0; 0, I/beta0)
    - (d/2) log beta0), each K x B: the extended space's weight (module docstring)."""
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    key_z, key_rho = (None, None) if key is None else jax.random.split(key)
    z_KxBxL, log_q_KxB = gaussian_draws(mu_BxL, logvar_BxL, key_z, num_samples)
    shape = z_KxBxL.shape
    gamma = jnp.zeros(shape) if key_rho is None else jax.random.normal(key_rho, shape)
    beta0 = self.beta0()
    rho_KxBxL = gamma / jnp.sqrt(beta0)
    log_q_KxB = (
      log_q_KxB
      + losses.gaussian_log_density(rho_KxBxL, 0.0, -jnp.log(beta0))
      - 0.5 * self.latent_dim * jnp.log(beta0)
    )
    z_KxBxL, rho_KxBxL = self.dynamics(x_BxHxWxC, z_KxBxL, rho_KxBxL)
    log_p_KxB = self.log_prior(z_KxBxL) + losses.gaussian_log_density(rho_KxBxL, 0.0, 0.0)
    return self.decode(z_KxBxL), log_p_KxB, log_q_KxB

  def dynamics(self, x_BxHxWxC, z_KxBxL, rho_KxBxL):
    """(z_T, rho_T): T leapfrog steps on -log p(x, z), each followed by its tempering."""
    step_size = jnp.exp(self.log_step_size)
    scales = inverse_sqrt_betas(self.beta0(), self.leapfrog_steps)

    def grad_log_p(z):  # Per draw: the draws' log-densities are independent.
      (grad_z,) = nn.grad(lambda mdl, z: jnp.sum(mdl.log_joint(x_BxHxWxC, z)), self, z)
      return grad_z

    for t in range(1, self.leapfrog_steps + 1):
      z_KxBxL, rho_KxBxL = leapfrog(z_KxBxL, rho_KxBxL, step_size, grad_log_p)
      rho_KxBxL = rho_KxBxL * scales[t] / scales[t - 1]  # sqrt(beta_{t-1} / beta_t)
    return z_KxBxL, rho_KxBxL

  def posterior_point(self, x_BxHxWxC):
    """z_T from z0 = mu and rho0 = 0."""
    mu_BxL, _ = self.encode(x_BxHxWxC)
    return self.dynamics(x_BxHxWxC, mu_BxL[None], jnp.zeros((1, *mu_BxL.shape)))[0][0]

  def __call__(self, x_BxHxWxC, key=None):
    """(logits at one z_T per example, mu, logvar): the extended draw's image."""
    logits, _, _ = self.importance_terms(x_BxHxWxC, key, 1)
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    return logits[0], mu_BxL, logvar_BxL
