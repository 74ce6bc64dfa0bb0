"""Priors p(z) by name (``config.prior.name``), one file each, chosen apart from the model.

A prior is a flax Module the model builds as its ``prior`` submodule, so its parameters (a
VampPrior's pseudo-inputs, a mixture's means) train with the model and live in its
checkpoint. It implements ``log_prob(z_...xL, encode) -> log p(z)_...`` (nats, summed over
L, leading axes kept) and ``sample(key, num, encode) -> z_numxL``; ``encode`` is the model's
encoder, x -> (mu, logvar) of its Gaussian part, for a prior built from it (the VampPrior).
``standard = True`` only for N(0, I): the diagonal Gaussian's closed-form KL applies to it
alone. ``support`` ('euclidean' or 'sphere') must match the posterior's. Its dataclass
fields (but ``latent_dim`` and ``image_shape``, set by the run) are its config settings.
Built in: ``normal`` (the default), ``mog``, ``vamp``, ``spherical_uniform``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from vae_jax.registry import Registry, module_registrar

REGISTRY = Registry("prior", default="normal")
BUILT_FIELDS = ("latent_dim", "image_shape", "parent", "name")
Encode = Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # x_NxHxWxC -> (mu, logvar)


class Prior(nn.Module):
  """Abstract p(z) over R^latent_dim (or the sphere in it); see the module's docstring."""

  standard = False  # True: N(0, I), for which the diagonal Gaussian's KL is closed-form.
  unit_inputs = False  # True: built from inputs in [0, 1] (the VampPrior's pseudo-inputs).
  support = "euclidean"  # 'sphere': z on the unit sphere S^(latent_dim - 1).

  latent_dim: int = 20
  image_shape: tuple[int, ...] = (28, 28, 1)

  def log_prob(self, z_NxL: jax.Array, encode: Encode) -> jax.Array:
    raise NotImplementedError

  def sample(self, key: jax.Array, num: int, encode: Encode) -> jax.Array:
    raise NotImplementedError

  def check(self) -> None:
    """Refuses bad settings (ConfigError naming config.prior.<key>)."""


register_prior = module_registrar(REGISTRY, Prior, BUILT_FIELDS)


def build(spec: tuple[str, tuple[tuple[str, Any], ...]], latent_dim: int, image_shape) -> Prior:
  """The prior module of a model's ``prior_spec`` (name, settings as sorted items)."""
  name, settings = spec
  return REGISTRY.get(name).target(
    latent_dim=latent_dim, image_shape=tuple(image_shape), **dict(settings), name="prior"
  )


from vae_jax.priors import (  # noqa: E402,F401  (registers the built-in priors)
  mog,
  normal,
  spherical,
  vamp,
)
