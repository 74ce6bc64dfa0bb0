"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling, 2014).

The generative model p(y) p(z) p(x|y, z) (a conditional VAE: models/conditional.py) with
q(z|x, y) and a classifier q(y|x). Per example, in nats:

  labelled (x, y):  -L(x, y) = -log p(x|y, z) + KL(q(z|x, y) || p(z)) - log p(y)
  unlabelled x:     -U(x) = sum_y q(y|x) (-L(x, y)) - H(q(y|x))        (a bound on -log p(x))

and the objective J = sum_labelled -L + sum_unlabelled -U + alpha' sum_labelled -log q(y|x),
with alpha' = alpha * N / N_labelled (Kingma et al.'s code: beta = alpha * n_tot / n_labeled,
alpha = 0.1), so the classifier learns from the labels as well as through the bound. p(y) is
uniform. Which training labels a run keeps is ``config.data.labels_per_class`` (a draw with the
run's seed: vae_jax.step.labelled_mask); the others arrive as -1. Every label enumerated in U
costs one pass of the model per class (C x the batch).

The test metric (``for_evaluation``) scores every test image by -U(x), the model's bound on
-log p(x) (so ``test_loss`` compares with an unconditional VAE's), and reports the
classifier: ``class_error`` (argmax q(y|x) != y) and ``class_ce`` (-log q(y|x)), both sums
over the examples with a label (``labelled``): on the test set, divided by its size, the
error rate.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vae_jax import losses, step
from vae_jax.models import reparameterize
from vae_jax.objectives import Likelihood, internal, nll_fn, register_objective, static
from vae_jax.registry import ConfigError


@struct.dataclass
class M2Hparams(Likelihood):
  """alpha: weight of -log q(y|x) per labelled example, times N / N_labelled (Kingma et al.:
  0.1). marginal (not a setting: for_evaluation sets it): every example scored by -U(x), its
  label only for the classifier's metrics (the test metric)."""

  alpha: float = 0.1
  marginal: bool = internal(False)
  num_train_examples: int = static(60_000)
  num_labelled_examples: int = static(60_000)

  def check(self):
    super().check()
    if not (self.alpha >= 0 and math.isfinite(self.alpha)):
      raise ConfigError(f"config.objective.alpha={self.alpha}: expected a finite value >= 0")

  @property
  def classifier_weight(self) -> float:
    """alpha' = alpha * N / N_labelled."""
    return self.alpha * self.num_train_examples / max(self.num_labelled_examples, 1)

  def for_evaluation(self):
    return self.replace(marginal=True)


def neg_bounds(params, apply_fn, x, key, hparams: Likelihood, num_classes: int):
  """(-L(x, y) for every class y, C x B; its -log p(x|y, z) and KL parts, each C x B), nats.

  q(z|x, y) of every class from the model's ``encode_each_class`` (class-major rows); each
  (class, example) pair draws its own noise, row r of normal(key, CB x L) (None: z = mu).
  """
  batch = x.shape[0]
  mu_CBxL, logvar_CBxL = apply_fn({"params": params}, x, method="encode_each_class")
  z_CBxL = mu_CBxL
  if key is not None:
    eps_CBxL = jax.random.normal(key, mu_CBxL.shape, mu_CBxL.dtype)
    z_CBxL = reparameterize(mu_CBxL, logvar_CBxL, eps_CBxL)
  y_CB = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), batch)
  logits = apply_fn({"params": params}, z_CBxL, labels=y_CB, method="decode")
  x_CB = jnp.broadcast_to(x[None], (num_classes, *x.shape)).reshape(-1, *x.shape[1:])
  nll_CxB = nll_fn(params, hparams)(logits, x_CB).reshape(num_classes, batch)
  kl_CxB = losses.kl_per_example(mu_CBxL, logvar_CBxL).reshape(num_classes, batch)
  return nll_CxB + kl_CxB + jnp.log(num_classes), nll_CxB, kl_CxB


@register_objective("m2", M2Hparams, evaluate_with=None, uses_labels=True)
def m2(params, apply_fn, x, key, hparams: M2Hparams, labels):
  """J of Kingma et al. (2014) on a batch whose labels are -1 where unknown (batch sums, nats).

  Metrics: loss; bce and kl (of the labelled bound at the label, of the unlabelled one as
  their expectation under q(y|x)); labelled; class_error and class_ce over the labelled.
  loss is not bce + kl: it adds -log p(y) = log C per example, takes off H(q(y|x)) for each
  unlabelled one, and adds alpha N / N_labelled times class_ce.
  """
  log_q_BxC = jax.nn.log_softmax(apply_fn({"params": params}, x, method="classify"))
  num_classes = log_q_BxC.shape[-1]
  neg_l_CxB, nll_CxB, kl_CxB = neg_bounds(params, apply_fn, x, key, hparams, num_classes)
  known_B = labels >= 0
  onehot_CxB = jax.nn.one_hot(jnp.where(known_B, labels, 0), num_classes).T
  q_CxB = jnp.exp(log_q_BxC).T
  use_label_B = known_B & (not hparams.marginal)
  # The weight of each class's bound: the label where it is used, q(y|x) elsewhere.
  weight_CxB = jnp.where(use_label_B, onehot_CxB, q_CxB)
  entropy_B = -jnp.sum(q_CxB * log_q_BxC.T, axis=0)
  neg_bound_B = jnp.sum(weight_CxB * neg_l_CxB, axis=0) - jnp.where(use_label_B, 0.0, entropy_B)
  ce_B = -jnp.sum(onehot_CxB * log_q_BxC.T, axis=0)
  loss = jnp.sum(neg_bound_B)
  if not hparams.marginal:
    loss = loss + hparams.classifier_weight * jnp.sum(jnp.where(known_B, ce_B, 0.0))
  wrong_B = jnp.argmax(log_q_BxC, axis=-1) != labels
  return loss, {
    "loss": loss,
    "bce": jnp.sum(weight_CxB * nll_CxB),
    "kl": jnp.sum(weight_CxB * kl_CxB),
    "labelled": jnp.sum(known_B.astype(jnp.float32)),
    "class_error": jnp.sum((known_B & wrong_B).astype(jnp.float32)),
    "class_ce": jnp.sum(jnp.where(known_B, ce_B, 0.0)),
  }


def labelled_indices(seed: int, labels_N, per_class: int, num_classes: int = 10) -> np.ndarray:
  """Indices of the training examples whose labels a run of this seed keeps with
  data.labels_per_class = per_class (the draw of vae_jax.step.kept_labels): what a
  classifier trained on the same labels, or a conditional VAE on the labelled part, uses."""
  from vae_jax.group import split_seed

  kept = step.kept_labels(
    split_seed(seed)[1], jnp.asarray(labels_N, jnp.int32), per_class, num_classes
  )
  return np.flatnonzero(np.asarray(kept) >= 0)
