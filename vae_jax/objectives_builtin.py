"""The built-in objectives: elbo (the reference), iwae, ae and beta_tcvae.

Each is one function registered by name (see vae_jax.objectives for the contract); a new
objective is one more function like these, in any module, with its Hparams.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from vae_jax import losses
from vae_jax.models import reparameterize
from vae_jax.objectives import Denoising, Likelihood, nll_fn, register_objective, static
from vae_jax.registry import ConfigError


def _positive(hparams, *keys):
  for key in keys:
    value = getattr(hparams, key)
    if not (value >= 0 and math.isfinite(value)):
      raise ConfigError(f"config.objective.{key}={value}: expected a finite value >= 0")


@struct.dataclass
class ElboHparams(Denoising):
  """beta: KL weight (1: the ELBO); kl_warmup_epochs: beta ramps as min(1, step / warm-up
  steps); free_bits: nats per latent dim below which KL is free (0: off)."""
  beta: float = 1.0
  kl_warmup_epochs: int = 0
  free_bits: float = static(0.0)
  steps_per_epoch: int = static(1)

  def check(self):
    super().check()
    _positive(self, "beta", "free_bits", "kl_warmup_epochs")
    if self.kl_warmup_epochs * self.steps_per_epoch >= 2**31:
      raise ConfigError(f"config.objective.kl_warmup_epochs={self.kl_warmup_epochs}: "
                        f"{self.kl_warmup_epochs * self.steps_per_epoch:,} warm-up steps overflow "
                        "the int32 step counter")

  def at_step(self, step):
    warmup_steps = self.kl_warmup_epochs * self.steps_per_epoch
    ramp = jnp.minimum(1.0, (step + 1) / jnp.maximum(warmup_steps, 1))
    return self.replace(beta=self.beta * jnp.where(warmup_steps > 0, ramp, 1.0))

  def for_evaluation(self):
    return super().for_evaluation().replace(beta=1.0, kl_warmup_epochs=0, free_bits=0.0)


@register_objective("elbo", ElboHparams, evaluate_with=None)
def elbo(params, apply_fn, x, key, hparams: ElboHparams):
  """rec + beta * KL (batch sums); metrics loss, bce (-log p(x|z)), kl (unweighted).

  At key=None (z = mu) kl is left out: it does not depend on z.
  """
  logits, mu_BxL, logvar_BxL = apply_fn({"params": params}, hparams.encoder_input(x, key), key)
  rec = jnp.sum(nll_fn(params, hparams)(logits, x))
  kl = jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL))
  kl_term = losses.free_bits_kl(mu_BxL, logvar_BxL, hparams.free_bits) if hparams.free_bits else kl
  loss = rec + hparams.beta * kl_term
  return loss, ({"loss": loss, "bce": rec} if key is None else {"loss": loss, "bce": rec, "kl": kl})


@struct.dataclass
class IwaeHparams(Likelihood):
  """num_samples: K of the importance-weighted bound (Burda et al., 2015); 1 is the ELBO."""
  num_samples: int = static(1)

  def check(self):
    super().check()
    if self.num_samples < 1:
      raise ConfigError(f"config.objective.num_samples={self.num_samples}: expected an integer >= 1")


def sample_latents(apply_fn, params, x, key, num_samples: int):
  """(z_KxBxL, mu_BxL, logvar_BxL, logits_KxBx...) for K draws from q(z|x)."""
  mu_BxL, logvar_BxL = apply_fn({"params": params}, x, method="encode")
  if key is None:
    z_KxBxL = jnp.broadcast_to(mu_BxL, (num_samples, *mu_BxL.shape))
  else:
    z_KxBxL = reparameterize(mu_BxL, logvar_BxL, jax.random.normal(key, (num_samples, *mu_BxL.shape)))
  return z_KxBxL, mu_BxL, logvar_BxL, apply_fn({"params": params}, z_KxBxL, method="decode")


@register_objective("iwae", IwaeHparams)
def iwae(params, apply_fn, x, key, hparams: IwaeHparams):
  """-sum_b [logsumexp_k log w_k - log K]; metrics loss, bce (first sample), kl (analytic)."""
  z_KxBxL, mu_BxL, logvar_BxL, logits = sample_latents(apply_fn, params, x, key, hparams.num_samples)
  nll_KxB = nll_fn(params, hparams, batch_ndim=2)(logits, x[None])
  loss = -jnp.sum(losses.iwae_bound(-nll_KxB, z_KxBxL, mu_BxL, logvar_BxL))
  return loss, {"loss": loss, "bce": jnp.sum(nll_KxB[0]),
                "kl": jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL))}


@register_objective("ae", Denoising, evaluate_with=None)
def ae(params, apply_fn, x, key, hparams: Denoising):
  """Deterministic autoencoder: z = mu, no KL; loss = bce = -log p(x|z) summed."""
  logits, _, _ = apply_fn({"params": params}, hparams.encoder_input(x, key), None)
  rec = jnp.sum(nll_fn(params, hparams)(logits, x))
  return rec, {"loss": rec, "bce": rec}


@struct.dataclass
class TcHparams(Likelihood):
  """beta-TCVAE (Chen et al., 2018): weights of the index-code MI, the total correlation and
  the dimension-wise KL; all 1 is the ELBO. num_train_examples: N of the minibatch-weighted
  sampling estimate (set from the data)."""
  mi_weight: float = 1.0
  tc_weight: float = 1.0
  dw_weight: float = 1.0
  num_train_examples: int = static(60_000)

  def check(self):
    super().check()
    _positive(self, "mi_weight", "tc_weight", "dw_weight")


@register_objective("beta_tcvae", TcHparams)
def beta_tcvae(params, apply_fn, x, key, hparams: TcHparams):
  """rec + a MI + b TC + g DWKL with log q(z) by minibatch-weighted sampling (batch sums).

  log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log(N B), and the same per dimension for the
  product of marginals; metrics loss, bce, kl (analytic), mi, tc, dwkl.
  """
  mu_BxL, logvar_BxL = apply_fn({"params": params}, x, method="encode")
  z_BxL = mu_BxL if key is None else reparameterize(
      mu_BxL, logvar_BxL, jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype))
  logits = apply_fn({"params": params}, z_BxL, method="decode")
  rec = jnp.sum(nll_fn(params, hparams)(logits, x))
  batch = x.shape[0]
  log_norm = jnp.log(batch * hparams.num_train_examples)
  # log q(z_i,l | x_j) for every pair (i, j) and dimension l.
  log_q_BxBxL = -0.5 * (jnp.log(2 * jnp.pi) + logvar_BxL[None]
                        + jnp.square(z_BxL[:, None] - mu_BxL[None]) * jnp.exp(-logvar_BxL[None]))
  log_qz_B = jax.nn.logsumexp(log_q_BxBxL.sum(-1), axis=1) - log_norm
  log_prod_B = jnp.sum(jax.nn.logsumexp(log_q_BxBxL, axis=1) - log_norm, axis=-1)
  log_qz_x_B = losses.gaussian_log_density(z_BxL, mu_BxL, logvar_BxL)
  log_pz_B = losses.gaussian_log_density(z_BxL, 0.0, 0.0)
  mi, tc, dwkl = (jnp.sum(log_qz_x_B - log_qz_B), jnp.sum(log_qz_B - log_prod_B),
                  jnp.sum(log_prod_B - log_pz_B))
  loss = rec + hparams.mi_weight * mi + hparams.tc_weight * tc + hparams.dw_weight * dwkl
  return loss, {"loss": loss, "bce": rec, "kl": jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL)),
                "mi": mi, "tc": tc, "dwkl": dwkl}

