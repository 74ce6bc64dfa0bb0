"""A trained model as a research script uses it: encode, decode, sample, classify, log-likelihood.

Each takes a train state (``vae_jax.load_run`` or ``vae_jax.train``) and works in chunks,
so any number of examples fits in memory. A conditional model (models/conditional.py) takes
the images' labels: class indices, or rows of class probabilities.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.typing import ArrayLike

from vae_jax import evaluate, objectives
from vae_jax.step import TrainState, model_of


def labels_for(
  state: TrainState, labels: ArrayLike | None, num: int, cycle: bool = False
) -> np.ndarray | None:
  """The labels a model's method receives: None for an unconditional model (labels given
  there: ValueError); for a conditional one the given labels (one int: every example's), or
  when none are given, class i mod C for example i (cycle: drawing images) or ValueError."""
  model = model_of(state)
  if not model.conditional:
    if labels is not None:
      raise ValueError(
        f"labels: model {type(model).__name__} is not conditional (it never sees a label)"
      )
    return None
  if labels is None:
    if not cycle:
      raise ValueError(
        f"labels: model {type(model).__name__} is conditional; pass the images' labels"
      )
    return np.arange(num, dtype=np.int32) % model.num_classes
  labels = np.asarray(labels)
  if labels.ndim == 0:
    labels = np.full(num, labels)
  if np.issubdtype(labels.dtype, np.integer):
    if (
      len(labels) != num or labels.min(initial=0) < 0 or labels.max(initial=0) >= model.num_classes
    ):
      raise ValueError(
        f"labels: expected {num} class indices in [0, {model.num_classes}), got "
        f"{len(labels)} in [{labels.min(initial=0)}, {labels.max(initial=0)}]"
      )
    return labels.astype(np.int32)
  if labels.shape != (num, model.num_classes):
    raise ValueError(
      f"labels: expected {num} class indices or {num} x {model.num_classes} class "
      f"probabilities, got shape {labels.shape}"
    )
  return labels.astype(np.float32)


def encode(
  state: TrainState, x_NxHxWxC: ArrayLike, labels: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
  """(mu_NxL, logvar_NxL) of q(z|x) (conditional: q(z|x, y)) for images in [0, 1], when q is
  the diagonal Gaussian; for another posterior family (a flow, the vMF) (code_NxL, None),
  the code being the posterior's deterministic point (VAE.posterior_point: a flow's image of
  the base mean, the vMF's mean direction), never the base Gaussian's mean."""
  x = np.asarray(x_NxHxWxC, np.float32)
  given = labels_for(state, labels, len(x))
  if model_of(state).gaussian_posterior:
    return evaluate.encode_all(state.params, state.apply_fn, x, labels_N=given)
  return evaluate.apply_all(state.params, state.apply_fn, x, "posterior_point", given), None


def decode(state: TrainState, z_NxL: ArrayLike, labels: ArrayLike | None = None) -> np.ndarray:
  """Mean images in [0, 1] of codes, N x H x W x C (conditional: of classes labels)."""
  z = np.asarray(z_NxL, np.float32)
  return evaluate.decode_all(
    state.params, state.apply_fn, z, labels_N=labels_for(state, labels, len(z))
  )


def sample(
  state: TrainState, num: int, key: jax.Array, labels: ArrayLike | None = None
) -> np.ndarray:
  """num images decoded from z ~ p(z) (the run's prior; N(0, I): normal(key, (num, L))) drawn
  with key; a conditional model's of class ``labels`` (one class, or one per image; None:
  image i of class i mod C)."""
  z_NxL = state.apply_fn({"params": state.params}, key, num, method="sample_prior")
  return decode(state, np.asarray(z_NxL), labels_for(state, labels, num, cycle=True))


def classify(state: TrainState, x_NxHxWxC: ArrayLike) -> np.ndarray:
  """q(y|x) of a model with a classifier (conditional, classifier_hidden > 0): N x C
  probabilities; argmax is the predicted class."""
  if not getattr(model_of(state), "classifier_hidden", 0):
    raise ValueError(
      f"classify: model {type(model_of(state)).__name__} has no classifier q(y|x) (a "
      "conditional model with config.model.classifier_hidden > 0 has one)"
    )
  logits = evaluate.apply_all(state.params, state.apply_fn, x_NxHxWxC, "classify")
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def log_likelihood(
  state: TrainState,
  x_NxHxWxC: ArrayLike,
  key: jax.Array,
  num_samples: int = 5000,
  likelihood: objectives.Likelihood = objectives.Likelihood(),
  labels: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
  """Per-example importance-sampled log p(x) and ELBO (nats; evaluate.iwae_log_likelihood);
  of a conditional model, log p(x|y) for the images' labels (required)."""
  x = np.asarray(x_NxHxWxC, np.float32)
  if model_of(state).conditional and labels is None:
    raise ValueError("labels: a conditional model's likelihood is log p(x|y); pass the labels")
  return evaluate.iwae_log_likelihood(
    state.params,
    state.apply_fn,
    x,
    key,
    num_samples,
    likelihood=likelihood,
    labels_N=labels_for(state, labels, len(x)),
  )
