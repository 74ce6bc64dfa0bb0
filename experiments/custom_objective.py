"""An objective of your own, from outside the package: the MMD-VAE, and a sweep over its weight.

Run (about 2 minutes on the project's 2-core CPU with the defaults; 12,000 training images):
  .venv/bin/python -m experiments.custom_objective --workdir runs/custom_objective

Question: the MMD-VAE (InfoVAE, Zhao et al. 2017) replaces the per-example KL by a maximum
mean discrepancy between the aggregate posterior q(z) and the prior. How do reconstruction
and the ELBO move with its weight? What it shows about the library: the objective is this
file's one function and its Hparams; ``register_objective`` makes it ``config.objective.name
= 'mmd_vae'`` with the setting ``config.objective.mmd_weight``, which is traced, so the
sweep trains every weight and seed of the study in one group. No file of vae_jax changes.

Outputs in --workdir (those of every sweep): results.csv (with train_mmd, the MMD estimate),
summary.md, test_loss.png, runs/<setting>/seed<k>/. The test loss is the ELBO (the
objective's evaluate_with default), so the weights are compared on one scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import struct

import vae_jax


@struct.dataclass
class MmdHparams(vae_jax.Likelihood):
  """mmd_weight: per-example weight of MMD^2(q(z), N(0, I)) (the KL term is dropped)."""

  mmd_weight: float = 10.0


def mmd_squared(a_BxL, b_BxL):
  """The biased MMD^2 estimate between two samples, Gaussian kernel of width sqrt(L)."""

  def kernel(x, y):
    return jnp.exp(-jnp.sum(jnp.square(x[:, None] - y[None]), -1) / (2.0 * x.shape[-1]))

  return (
    jnp.mean(kernel(a_BxL, a_BxL))
    + jnp.mean(kernel(b_BxL, b_BxL))
    - 2.0 * jnp.mean(kernel(a_BxL, b_BxL))
  )


@vae_jax.register_objective("mmd_vae", MmdHparams)
def mmd_vae(params, apply_fn, x, key, hparams: MmdHparams):
  """rec + mmd_weight * B * MMD^2(z, z_prior): batch sums; metrics loss, bce (-log p(x|z)
  under config.objective.likelihood), kl, mmd."""
  key = jax.random.key(0) if key is None else key  # z = mu still needs prior draws.
  logits, mu_BxL, logvar_BxL = apply_fn({"params": params}, x, key)
  z_BxL = mu_BxL + jnp.exp(0.5 * logvar_BxL) * jax.random.normal(key, mu_BxL.shape)  # As decoded.
  prior_BxL = jax.random.normal(jax.random.fold_in(key, 3), mu_BxL.shape)
  rec = jnp.sum(vae_jax.nll_fn(params, hparams)(logits, x))  # The configured likelihood.
  mmd = x.shape[0] * mmd_squared(z_BxL, prior_BxL)
  loss = rec + hparams.mmd_weight * mmd
  return loss, {
    "loss": loss,
    "bce": rec,
    "kl": jnp.sum(vae_jax.kl_per_example(mu_BxL, logvar_BxL)),
    "mmd": mmd,
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
  parser.add_argument("--workdir", type=Path, default=Path("runs/custom_objective"))
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--train-examples", type=int, default=12_000)
  parser.add_argument("--test-examples", type=int, default=2_000)
  parser.add_argument("--seeds", type=int, default=2)
  args = parser.parse_args()
  study = vae_jax.make_study(
    name="mmd_vae",
    question="How do reconstruction and the ELBO move with the MMD weight?",
    axes={"objective.mmd_weight": [1.0, 10.0, 100.0]},
    seeds=args.seeds,
    base={
      "objective.name": "mmd_vae",
      "optim.num_epochs": args.epochs,
      "data.train_examples": args.train_examples,
      "data.test_examples": args.test_examples,
    },
  )
  vae_jax.run_study(study, args.workdir)
  print((args.workdir / "summary.md").read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
