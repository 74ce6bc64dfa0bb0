"""The built-in objectives: elbo (the reference), vae_k, iwae, ae and beta_tcvae.

Each is one function registered by name (see vae_jax.objectives for the contract); a new
objective is one more function like these, in any module, with its Hparams.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from vae_jax import losses
from vae_jax.objectives import Denoising, Likelihood, nll_fn, register_objective, static
from vae_jax.posteriors.gaussian import reparameterize
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
      raise ConfigError(
        f"config.objective.kl_warmup_epochs={self.kl_warmup_epochs}: "
        f"{self.kl_warmup_epochs * self.steps_per_epoch:,} warm-up steps overflow "
        "the int32 step counter"
      )

  def at_step(self, step):
    warmup_steps = self.kl_warmup_epochs * self.steps_per_epoch
    ramp = jnp.minimum(1.0, (step + 1) / jnp.maximum(warmup_steps, 1))
    return self.replace(beta=self.beta * jnp.where(warmup_steps > 0, ramp, 1.0))

  def for_evaluation(self):
    return super().for_evaluation().replace(beta=1.0, kl_warmup_epochs=0, free_bits=0.0)


@register_objective(
  "elbo", ElboHparams, evaluate_with=None, gaussian_latent=lambda s: s.get("free_bits", 0) > 0
)
def elbo(params, apply_fn, x, key, hparams: ElboHparams):
  """rec + beta * KL (batch sums); metrics loss, bce (-log p(x|z)), kl (unweighted).

  The KL is closed-form where the prior and posterior allow (the reference's Gaussian to
  N(0, I); the vMF to the uniform sphere), else log q(z|x) - log p(z) at the sampled z (the
  model's elbo_terms). At key=None (z at the posterior's code) kl is left out.
  """
  logits, kl_B, gaussian = apply_fn(
    {"params": params}, hparams.encoder_input(x, key), key, method="elbo_terms"
  )
  rec = jnp.sum(nll_fn(params, hparams)(logits, x))
  kl = jnp.sum(kl_B)
  if hparams.free_bits:  # config.parse refuses free bits where gaussian is None.
    mu_BxL, logvar_BxL = gaussian
    kl_term = losses.free_bits_kl(mu_BxL, logvar_BxL, hparams.free_bits)
  else:
    kl_term = kl
  loss = rec + hparams.beta * kl_term
  return loss, ({"loss": loss, "bce": rec} if key is None else {"loss": loss, "bce": rec, "kl": kl})


@struct.dataclass
class IwaeHparams(Likelihood):
  """num_samples: K of the importance-weighted bound (Burda et al., 2015); 1 is the ELBO."""

  num_samples: int = static(1)

  def check(self):
    super().check()
    if self.num_samples < 1:
      raise ConfigError(
        f"config.objective.num_samples={self.num_samples}: expected an integer >= 1"
      )


def log_weights(params, apply_fn, x, key, num_samples: int, hparams: Likelihood):
  """(log w_KxB, -log p(x|z)_KxB, log q(z|x) - log p(z) _KxB) for K draws from q(z|x), nats.

  The model's ``importance_terms`` draws the K latents from key (None: the posterior's
  deterministic code), so a hierarchical model's weights cover all its layers and any prior
  and posterior family its own log-densities.
  """
  logits, log_p_KxB, log_q_KxB = apply_fn(
    {"params": params}, x, key, num_samples, method="importance_terms"
  )
  nll_KxB = nll_fn(params, hparams, batch_ndim=2)(logits, x[None])
  return -nll_KxB + log_p_KxB - log_q_KxB, nll_KxB, log_q_KxB - log_p_KxB


@register_objective("iwae", IwaeHparams, importance_weighted=True)
def iwae(params, apply_fn, x, key, hparams: IwaeHparams):
  """-sum_b [logsumexp_k log w_k - log K]; metrics loss, bce (first sample), kl (mean over k
  of log q - log p: the Monte Carlo KL, which covers a hierarchical prior)."""
  log_w_KxB, nll_KxB, kl_KxB = log_weights(params, apply_fn, x, key, hparams.num_samples, hparams)
  loss = -jnp.sum(jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(hparams.num_samples))
  return loss, {"loss": loss, "bce": jnp.sum(nll_KxB[0]), "kl": jnp.sum(jnp.mean(kl_KxB, 0))}


@register_objective("vae_k", IwaeHparams, evaluate_with=None, importance_weighted=True)
def vae_k(params, apply_fn, x, key, hparams: IwaeHparams):
  """The k-sample ELBO: -sum_b mean_k log w_k (Burda et al.'s "VAE" with k samples; k = 1 is
  the ELBO with a Monte Carlo KL); metrics loss, bce and kl, each the mean over the k samples."""
  log_w_KxB, nll_KxB, kl_KxB = log_weights(params, apply_fn, x, key, hparams.num_samples, hparams)
  loss = -jnp.sum(jnp.mean(log_w_KxB, 0))
  return loss, {
    "loss": loss,
    "bce": jnp.sum(jnp.mean(nll_KxB, 0)),
    "kl": jnp.sum(jnp.mean(kl_KxB, 0)),
  }


@register_objective("ae", Denoising, evaluate_with=None, gaussian_latent=False)
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
  z_BxL = (
    mu_BxL
    if key is None
    else reparameterize(mu_BxL, logvar_BxL, jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype))
  )
  logits = apply_fn({"params": params}, z_BxL, method="decode")
  rec = jnp.sum(nll_fn(params, hparams)(logits, x))
  batch = x.shape[0]
  log_norm = jnp.log(batch * hparams.num_train_examples)
  # log q(z_i,l | x_j) for every pair (i, j) and dimension l.
  log_q_BxBxL = -0.5 * (
    jnp.log(2 * jnp.pi)
    + logvar_BxL[None]
    + jnp.square(z_BxL[:, None] - mu_BxL[None]) * jnp.exp(-logvar_BxL[None])
  )
  log_qz_B = jax.nn.logsumexp(log_q_BxBxL.sum(-1), axis=1) - log_norm
  log_prod_B = jnp.sum(jax.nn.logsumexp(log_q_BxBxL, axis=1) - log_norm, axis=-1)
  log_qz_x_B = losses.gaussian_log_density(z_BxL, mu_BxL, logvar_BxL)
  log_pz_B = losses.gaussian_log_density(z_BxL, 0.0, 0.0)
  mi, tc, dwkl = (
    jnp.sum(log_qz_x_B - log_qz_B),
    jnp.sum(log_qz_B - log_prod_B),
    jnp.sum(log_prod_B - log_pz_B),
  )
  loss = rec + hparams.mi_weight * mi + hparams.tc_weight * tc + hparams.dw_weight * dwkl
  return loss, {
    "loss": loss,
    "bce": rec,
    "kl": jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL)),
    "mi": mi,
    "tc": tc,
    "dwkl": dwkl,
  }
