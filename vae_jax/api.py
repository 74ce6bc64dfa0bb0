"""A trained model as a research script uses it: encode, decode, sample, log-likelihood.

Each takes a train state (``vae_jax.load_run`` or ``vae_jax.train``) and works in chunks,
so any number of examples fits in memory.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.typing import ArrayLike

from vae_jax import evaluate, objectives
from vae_jax.step import TrainState, model_of


def encode(state: TrainState, x_NxHxWxC: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """(mu_NxL, logvar_NxL) of q(z|x) for images in [0, 1] of the model's shape."""
  return evaluate.encode_all(state.params, state.apply_fn, x_NxHxWxC)


def decode(state: TrainState, z_NxL: ArrayLike) -> np.ndarray:
  """Mean images sigmoid(decoder(z)) in [0, 1], N x H x W x C."""
  return evaluate.decode_all(state.params, state.apply_fn, z_NxL)


def sample(state: TrainState, num: int, key: jax.Array) -> np.ndarray:
  """num images decoded from z ~ N(0, I) drawn with key."""
  return decode(state, jax.random.normal(key, (num, model_of(state).latent_dim)))


def log_likelihood(
  state: TrainState,
  x_NxHxWxC: ArrayLike,
  key: jax.Array,
  num_samples: int = 5000,
  likelihood: objectives.Likelihood = objectives.Likelihood(),
) -> dict[str, np.ndarray]:
  """Per-example importance-sampled log p(x) and ELBO (nats; evaluate.iwae_log_likelihood)."""
  return evaluate.iwae_log_likelihood(
    state.params, state.apply_fn, x_NxHxWxC, key, num_samples, likelihood=likelihood
  )
