"""The VampPrior (Tomczak & Welling, 2018): p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs.

The pseudo-inputs are parameters of the prior (K x H x W x C), trained with the model; each
u_k passes through the model's own encoder, so the prior moves with it. As the paper's code
they start at N(0.05, 0.01^2) and are clipped to [0, 1] (its hard-tanh). With a posterior
that is not a diagonal Gaussian, the components are the encoder's Gaussian part q0(z|u_k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax.priors import register_prior
from vae_jax.priors.mog import Mixture


@register_prior("vamp")
class VampPrior(Mixture):
  """num_components: K (500 in the paper); init_mean / init_std: the pseudo-inputs' init."""

  unit_inputs = True

  num_components: int = 500
  init_mean: float = 0.05
  init_std: float = 0.01

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
    """The encoder's (mu, logvar) at each pseudo-input."""
    return encode(self.pseudo_inputs())
