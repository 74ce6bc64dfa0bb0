"""MIWAE, PIWAE and CIWAE: Rainforth et al. (2018), "Tighter variational bounds are not
necessarily better".

From M x K draws z_mk ~ q(z|x) and their log weights log w_mk (nats, per example):
- IWAE_K = logsumexp_k log w_k - log K;
- MIWAE(M, K) = mean_m IWAE_K(group m): M = 1 is IWAE_K, K = 1 the M-sample ELBO;
- CIWAE(beta) = beta ELBO + (1 - beta) IWAE_K over the same K draws: beta 1 is the ELBO,
  beta 0 the IWAE;
- PIWAE(M, K): the inference network ascends MIWAE(M, K), the generative network
  IWAE_{MK} of the same M x K draws (its reported loss is -IWAE_{MK}).
Losses are batch sums of the negated bounds, as every objective's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vae_jax.estimators import split_gradients
from vae_jax.objectives import Likelihood, register_objective, static
from vae_jax.objectives_builtin import log_weights
from vae_jax.registry import ConfigError


def iwae_bound(log_w_KxB):
  """logsumexp_k log w_k - log K per example (B)."""
  return jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(log_w_KxB.shape[0])


@struct.dataclass
class MiwaeHparams(Likelihood):
  """num_groups: M; num_samples: K per group (M x K draws)."""

  num_groups: int = static(8)
  num_samples: int = static(8)

  def check(self):
    super().check()
    for key in ("num_groups", "num_samples"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.objective.{key}={getattr(self, key)}: expected an integer >= 1")


def grouped(params, apply_fn, x, key, hparams: MiwaeHparams):
  """(log w_MxKxB, -log p(x|z)_MxKxB, log q - log p _MxKxB) of M x K draws."""
  m, k = hparams.num_groups, hparams.num_samples
  log_w, nll, kl = log_weights(params, apply_fn, x, key, m * k, hparams)
  return tuple(a.reshape(m, k, *a.shape[1:]) for a in (log_w, nll, kl))


def miwae_bound(log_w_MxKxB):
  """mean_m IWAE_K(group m) per example (B)."""
  return jnp.mean(jax.vmap(iwae_bound)(log_w_MxKxB), axis=0)


def sample_metrics(nll_MxKxB, kl_MxKxB) -> dict:
  return {"bce": jnp.sum(jnp.mean(nll_MxKxB, (0, 1))), "kl": jnp.sum(jnp.mean(kl_MxKxB, (0, 1)))}


@register_objective("miwae", MiwaeHparams, importance_weighted=True)
def miwae(params, apply_fn, x, key, hparams: MiwaeHparams):
  """-sum_b MIWAE(M, K); metrics loss, bce and kl (means over the M x K draws)."""
  log_w, nll, kl = grouped(params, apply_fn, x, key, hparams)
  loss = -jnp.sum(miwae_bound(log_w))
  return loss, {"loss": loss, **sample_metrics(nll, kl)}


@register_objective("piwae", MiwaeHparams, importance_weighted=True)
def piwae(params, apply_fn, x, key, hparams: MiwaeHparams):
  """The inference network's gradient is -grad MIWAE(M, K), the generative network's
  -grad IWAE_{MK}, from the same draws (split_gradients); metrics loss (-IWAE_{MK}), miwae
  (-MIWAE(M, K)), bce, kl."""
  inference, generative = split_gradients(params)
  log_w_q, _, _ = grouped(inference, apply_fn, x, key, hparams)
  log_w_p, nll, kl = grouped(generative, apply_fn, x, key, hparams)
  iwae_total = -jnp.sum(iwae_bound(log_w_p.reshape(-1, log_w_p.shape[-1])))
  miwae_total = -jnp.sum(miwae_bound(log_w_q))
  surrogate = iwae_total + miwae_total  # Each group's gradient is its own bound's.
  return surrogate, {"loss": iwae_total, "miwae": miwae_total, **sample_metrics(nll, kl)}


@struct.dataclass
class CiwaeHparams(Likelihood):
  """num_samples: K; beta: the ELBO's weight (1 - beta the IWAE's)."""

  num_samples: int = static(50)
  beta: float = 0.5

  def check(self):
    super().check()
    if self.num_samples < 1:
      raise ConfigError(
        f"config.objective.num_samples={self.num_samples}: expected an integer >= 1"
      )
    if not 0.0 <= self.beta <= 1.0:
      raise ConfigError(f"config.objective.beta={self.beta}: expected a value in [0, 1]")


@register_objective("ciwae", CiwaeHparams, importance_weighted=True)
def ciwae(params, apply_fn, x, key, hparams: CiwaeHparams):
  """-sum_b [beta ELBO_K + (1 - beta) IWAE_K] over the same K draws; metrics loss, bce, kl."""
  log_w, nll, kl = log_weights(params, apply_fn, x, key, hparams.num_samples, hparams)
  bound = hparams.beta * jnp.mean(log_w, 0) + (1.0 - hparams.beta) * iwae_bound(log_w)
  loss = -jnp.sum(bound)
  return loss, {"loss": loss, "bce": jnp.sum(jnp.mean(nll, 0)), "kl": jnp.sum(jnp.mean(kl, 0))}
