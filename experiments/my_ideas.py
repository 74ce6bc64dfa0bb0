"""Ideas of one's own, in one file outside vae_jax: a residual-MLP VAE and a cyclical-beta ELBO.

Train with them, then use the run as any other (the run records this module, so every
later command imports it again; it must stay importable, e.g. on PYTHONPATH):
  python -m vae_jax train --workdir runs/resmlp --plugin=experiments.my_ideas \
      --config.model.name=resmlp --config.objective.name=cyclical --config.objective.beta=0.5
  python -m vae_jax evaluate --workdir runs/resmlp
  python -m vae_jax sample --workdir runs/resmlp --out samples.png

Each entry owns its settings, with its own defaults: ``config.model.hidden_dim`` is 64 for
resmlp (400 for mlp), ``config.objective.beta`` 0.25 for cyclical (1 for elbo). The
objective reads the run context (``steps_per_epoch``, filled in by the run) to turn its
cycle length from epochs into steps. Its test metric is the ELBO (evaluate_with='elbo').
tests/test_plugins.py copies this file outside the repository and runs it end to end.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

import vae_jax


class ResidualStack(nn.Module):
  """Dense to hidden_dim, num_blocks residual ReLU blocks, then Dense to out_dim."""

  hidden_dim: int
  num_blocks: int
  out_dim: int

  @nn.compact
  def __call__(self, h_BxI):
    h_BxH = nn.Dense(self.hidden_dim)(h_BxI)
    for _ in range(self.num_blocks):
      h_BxH = h_BxH + nn.Dense(self.hidden_dim)(nn.relu(h_BxH))
    return nn.Dense(self.out_dim)(nn.relu(h_BxH))


class Encoder(nn.Module):
  """x_BxHxWxC -> (mu_BxL, logvar_BxL)."""

  hidden_dim: int
  num_blocks: int
  latent_dim: int

  @nn.compact
  def __call__(self, x_BxHxWxC):
    out_Bx2L = ResidualStack(self.hidden_dim, self.num_blocks, 2 * self.latent_dim)(
      x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    )
    return out_Bx2L[:, : self.latent_dim], out_Bx2L[:, self.latent_dim :]


@vae_jax.register_model("resmlp")
class ResMLP(vae_jax.VAE):
  """Residual MLP encoder and decoder; settings hidden_dim, num_blocks (and latent_dim)."""

  hidden_dim: int = 64
  num_blocks: int = 1

  def check(self):
    for key in ("hidden_dim", "num_blocks"):
      if getattr(self, key) < 1:
        raise vae_jax.ConfigError(
          f"config.model.{key}={getattr(self, key)}: expected an integer >= 1"
        )

  def make_encoder(self):
    return Encoder(self.hidden_dim, self.num_blocks, self.latent_dim)

  def make_decoder(self):  # z_BxL -> logits_BxD; VAE.decode reshapes them to the images.
    return ResidualStack(self.hidden_dim, self.num_blocks, math.prod(self.output_shape))


@struct.dataclass
class CyclicalHparams(vae_jax.Likelihood):
  """beta: the KL weight at the top of each cycle; cycle_epochs: a cycle's length, whose
  first half ramps the weight from 0 to beta (Fu et al., 2019). steps_per_epoch: run context."""

  beta: float = 0.25
  cycle_epochs: int = vae_jax.static(1)
  steps_per_epoch: int = vae_jax.static(1)

  def check(self):
    super().check()
    if not self.beta >= 0 or self.cycle_epochs < 1:
      raise vae_jax.ConfigError(
        f"config.objective.beta={self.beta}, cycle_epochs="
        f"{self.cycle_epochs}: expected beta >= 0 and cycle_epochs >= 1"
      )

  def at_step(self, step):
    period = self.cycle_epochs * self.steps_per_epoch
    return self.replace(beta=self.beta * jnp.minimum(1.0, 2.0 * (step % period) / period))


@vae_jax.register_objective("cyclical", CyclicalHparams)
def cyclical(params, apply_fn, x, key, hparams: CyclicalHparams):
  """rec + beta(step) * KL (batch sums, nats); metrics loss, bce (-log p(x|z)), kl."""
  logits, mu_BxL, logvar_BxL = apply_fn({"params": params}, x, key)
  rec = jnp.sum(vae_jax.nll_fn(params, hparams)(logits, x))
  kl = jnp.sum(vae_jax.kl_per_example(mu_BxL, logvar_BxL))
  loss = rec + hparams.beta * kl
  return loss, {"loss": loss, "bce": rec, "kl": kl}
