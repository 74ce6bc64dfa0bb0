"""The IWAE bound with the doubly reparameterized gradient (DReG; Tucker et al., 2018).

The same bound as ``iwae``, another gradient for the inference network phi: with z_k =
z(eps_k; phi) and log w_k = log p(x, z_k) - log q(z_k | x; phi held fixed),
  grad_phi = sum_k wt_k^2 d log w_k / d z_k  dz_k / dphi,   wt = softmax_k(log w),
which has no score-function term, so its signal-to-noise ratio does not fall as K grows (the
plain IWAE encoder gradient's does; Rainforth et al., 2018). The generative network's
gradient is the IWAE's, sum_k wt_k grad log p(x, z_k). Both come from one surrogate whose
value is not the bound; the reported loss is -IWAE_K. It needs a posterior family with a
density at any z (``Posterior.density``: the Gaussian, the vMF; not a flow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax.estimators import split_gradients
from vae_jax.estimators.miwae import iwae_bound
from vae_jax.objectives import nll_fn, register_objective
from vae_jax.objectives_builtin import IwaeHparams


def dreg_log_weights(params, apply_fn, x, key, num_samples: int, hparams):
  """(log w_KxB with q's density at fixed parameters, -log p(x|z)_KxB, log q - log p): the
  draws z_k depend on the parameters, log q(z_k|x) only through z_k."""
  z_KxBxL, _ = apply_fn({"params": params}, x, key, num_samples, method="posterior_draws")
  log_q_KxB = apply_fn(
    {"params": jax.lax.stop_gradient(params)}, x, z_KxBxL, method="posterior_log_prob"
  )
  log_p_KxB = apply_fn({"params": params}, z_KxBxL, method="log_prior")
  logits = apply_fn({"params": params}, z_KxBxL, method="decode")
  nll_KxB = nll_fn(params, hparams, batch_ndim=2)(logits, x[None])
  return -nll_KxB + log_p_KxB - log_q_KxB, nll_KxB, log_q_KxB - log_p_KxB


@register_objective("iwae_dreg", IwaeHparams, importance_weighted=True, posterior_density=True)
def iwae_dreg(params, apply_fn, x, key, hparams: IwaeHparams):
  """-sum_b IWAE_K with DReG's inference gradient; metrics loss (-IWAE_K), bce (first
  sample), kl (mean over the K draws of log q - log p)."""
  inference, generative = split_gradients(params)
  k = hparams.num_samples
  log_w_q, _, _ = dreg_log_weights(inference, apply_fn, x, key, k, hparams)
  log_w_p, nll, kl = dreg_log_weights(generative, apply_fn, x, key, k, hparams)
  weights = jax.lax.stop_gradient(jax.nn.softmax(log_w_p, axis=0))
  surrogate = -jnp.sum(weights**2 * log_w_q) - jnp.sum(weights * log_w_p)
  loss = -jnp.sum(iwae_bound(log_w_p))
  return surrogate, {"loss": loss, "bce": jnp.sum(nll[0]), "kl": jnp.sum(jnp.mean(kl, 0))}
