"""The reference loss: binary cross-entropy summed over pixels + KL(q(z|x) || N(0, I)).

Per-example functions return nats per example (summed over pixels or latent dims);
``vae_loss`` sums over the batch, as the reference does (reduction='sum'). Reported
figures divide those sums by the number of examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def bce_with_logits(logits, x):
  """Elementwise -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))], stable for any l.

  Its derivative is written out (d/dl = sigmoid(l) - x, d/dx = -l): autodiff of the
  log1p(exp(-|l|)) form costs several more transcendental passes per step.
  """
  return jnp.maximum(logits, 0.0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _bce_with_logits_jvp(primals, tangents):
  logits, x = primals
  logits_dot, x_dot = tangents
  out = bce_with_logits(logits, x)
  out_dot = (jax.nn.sigmoid(logits) - x) * logits_dot
  if not isinstance(x_dot, jax.custom_derivatives.SymbolicZero):
    out_dot = out_dot - logits * x_dot
  return out, out_dot


bce_with_logits.defjvp(_bce_with_logits_jvp, symbolic_zeros=True)


def bce_per_example(logits_BxD, x_BxD):
  """-sum_d [x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))]: nats per example."""
  return jnp.sum(bce_with_logits(logits_BxD, x_BxD), axis=-1)


def kl_per_example(mu_BxL, logvar_BxL):
  """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum (1 + logvar - mu^2 - exp(logvar))."""
  return -0.5 * jnp.sum(1.0 + logvar_BxL - jnp.square(mu_BxL) - jnp.exp(logvar_BxL), axis=-1)


def vae_loss(logits_BxD, x_BxD, mu_BxL, logvar_BxL, beta: float = 1.0):
  """Batch sums (loss, bce, kl); loss = bce + beta * kl (beta = 1 is the reference)."""
  bce = jnp.sum(bce_per_example(logits_BxD, x_BxD))
  kl = jnp.sum(kl_per_example(mu_BxL, logvar_BxL))
  return bce + beta * kl, bce, kl
