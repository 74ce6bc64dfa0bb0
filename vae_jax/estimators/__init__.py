"""Estimators of the literature beyond the IWAE: one file each, registered as objectives.

``miwae``: MIWAE, PIWAE and CIWAE (Rainforth et al., 2018); ``dreg``: the IWAE bound with
the doubly reparameterized gradient for the inference network (Tucker et al., 2018). Each
reaches the latents through the model's ``importance_terms`` (any prior and posterior family)
and, for DReG, ``posterior_log_prob``. ``split_gradients`` is how an estimator gives the
inference network (encoder, posterior family) and the generative network (decoder, prior)
the gradients of two different surrogates in one loss. The split is by parameter group: a
prior built from the encoder (the VampPrior) passes the encoder's share of log p(z) to the
inference network's surrogate.
"""

from __future__ import annotations

from typing import Any

import jax

INFERENCE = ("encoder", "posterior")  # Parameter groups of q(z|x); the rest are p(x, z)'s.


def split_gradients(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params whose gradient reaches only the inference network, ... only the generative one):
  the same values, the other group behind stop_gradient."""
  stop = jax.lax.stop_gradient
  inference = {k: v if k in INFERENCE else stop(v) for k, v in params.items()}
  generative = {k: stop(v) if k in INFERENCE else v for k, v in params.items()}
  return inference, generative


from vae_jax.estimators import dreg, miwae  # noqa: E402,F401  (registers the estimators)
