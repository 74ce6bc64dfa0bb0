"""Posterior families q(z|x) by name (``config.posterior.name``), one file each.

The encoder gives a diagonal Gaussian (mu_BxL, logvar_BxL) and its last hidden layer h_BxH;
a posterior family turns them into draws and their log-density. It is a flax Module the
model builds as its ``posterior`` submodule (its parameters, such as a flow's amortizing
layers, train with the model) and implements
``__call__(mu, logvar, h, key, num_samples) -> (z_KxBxL, log q(z|x)_KxB)`` (key None: the
deterministic code, K copies of it) and, where it exists in closed form,
``kl(mu, logvar, h, prior) -> KL_B`` (None: the objective estimates it from samples).
``density = True`` where it also gives ``log_prob(mu, logvar, h, z)`` at any z (the Gaussian,
the vMF; a flow does not, having no inverse): DReG's gradient needs it.
``gaussian = True`` only for the diagonal Gaussian itself (the objectives that read
``encode``'s (mu, logvar) as the posterior need it); ``support`` must match the prior's.
Its dataclass fields (but ``latent_dim``) are its config settings. Built in: ``gaussian``
(the default), ``planar``, ``iaf``, ``vmf``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from vae_jax.registry import Registry, module_registrar

REGISTRY = Registry("posterior", default="gaussian")
BUILT_FIELDS = ("latent_dim", "parent", "name")


class Posterior(nn.Module):
  """Abstract q(z|x) from the encoder's outputs; see the module's docstring."""

  gaussian = False  # True: the diagonal Gaussian N(mu, exp(logvar)) itself.
  density = False  # True: log_prob gives log q(z|x) at any z.
  support = "euclidean"  # 'sphere': z on the unit sphere S^(latent_dim - 1).

  latent_dim: int = 20

  def __call__(self, mu_BxL, logvar_BxL, h_BxH, key: jax.Array | None, num_samples: int):
    raise NotImplementedError

  def log_prob(self, mu_BxL, logvar_BxL, h_BxH, z_KxBxL) -> jax.Array:
    """log q(z|x)_KxB at given z (families with ``density = True``)."""
    raise NotImplementedError(f"posterior {type(self).__name__} has no density at a given z")

  def kl(self, mu_BxL, logvar_BxL, h_BxH, prior) -> jax.Array | None:
    """KL(q(z|x) || p(z)) per example in closed form, or None (estimated from samples)."""
    return None

  def check(self) -> None:
    """Refuses bad settings (ConfigError naming config.posterior.<key>)."""


register_posterior = module_registrar(REGISTRY, Posterior, BUILT_FIELDS)


def build(spec: tuple[str, tuple[tuple[str, Any], ...]], latent_dim: int) -> Posterior:
  """The posterior module of a model's ``posterior_spec`` (name, settings as sorted items)."""
  name, settings = spec
  return REGISTRY.get(name).target(latent_dim=latent_dim, **dict(settings), name="posterior")


from vae_jax.posteriors import (  # noqa: E402,F401  (registers the built-in posteriors)
  gaussian,
  iaf,
  planar,
  vmf,
)
