"""Anomaly scores of a trained VAE, by name: one function each, higher = more anomalous.

  scoring = anomaly.Scoring(state, x_NxHxWxC, x_train_NxHxWxC, likelihood, key)
  scores = {name: anomaly.SCORES[name](scoring) for name in anomaly.SCORES}   # each (N,)

A score is ``fn(scoring) -> score_N`` registered with ``@register_score(name)``; quantities
several scores share (the importance-weighted estimates, the codes) are computed once by the
``Scoring`` and cached in it (``timed_score`` charges each score for what it used). Images are
floats in [0, 1]; likelihood scores are nats per image (bits where the name says so).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vae_jax import api, evaluate, objectives

SCORES: dict[str, Callable[[Scoring], np.ndarray]] = {}


def register_score(name: str):
  """Function decorator: registers fn(scoring) -> (N,) anomaly scores under name."""

  def decorate(fn):
    SCORES[name] = fn
    return fn

  return decorate


@dataclasses.dataclass
class Scoring:
  """What the scores of one model read: the model, the images to score, the normal class's
  training images (latent statistics), the likelihood it was trained with, the importance
  samples' key and count, and optionally a background model (likelihood ratio)."""

  state: Any
  x_NxHxWxC: np.ndarray
  x_train_NxHxWxC: np.ndarray
  likelihood: objectives.Likelihood = objectives.Likelihood()
  key: jax.Array = dataclasses.field(default_factory=lambda: jax.random.key(0))
  num_samples: int = 100
  background: Any = None
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)
  cache_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  used: set[str] = dataclasses.field(default_factory=set)

  def cached(self, name: str, compute: Callable[[], Any]):
    """compute() once per name; later calls return the stored value."""
    self.used.add(name)
    if name not in self.cache:
      start = time.perf_counter()
      self.cache[name] = compute()
      self.cache_seconds[name] = time.perf_counter() - start
    return self.cache[name]

  def estimates(self, background: bool = False) -> dict[str, np.ndarray]:
    """{'iwae', 'elbo'} per image (nats) from num_samples draws of q(z|x) (evaluate.iwae_log_likelihood)."""
    state = self.background if background else self.state

    def compute():
      if state is None:
        raise ValueError("this score needs a background model: Scoring(background=state)")
      return evaluate.iwae_log_likelihood(
        state.params,
        state.apply_fn,
        self.x_NxHxWxC,
        self.key,
        self.num_samples,
        batch_size=64,
        likelihood=self.likelihood,
      )

    return self.cached("background_estimates" if background else "estimates", compute)

  def codes(self, train: bool = False) -> np.ndarray:
    """mu of q(z|x), N x L, of the scored (or the training) images."""
    x = self.x_train_NxHxWxC if train else self.x_NxHxWxC
    return self.cached("train_codes" if train else "codes", lambda: api.encode(self.state, x)[0])

  def reconstruction(self) -> np.ndarray:
    """The decoder's mean image at z = mu, flat N x D, in [0, 1]."""
    return self.cached(
      "reconstruction",
      lambda: np.reshape(api.decode(self.state, self.codes()), (len(self.x_NxHxWxC), -1)),
    )


def timed_score(scoring: Scoring, name: str) -> tuple[np.ndarray, float]:
  """(SCORES[name](scoring), seconds): its own work plus every cached quantity it read, even
  one another score computed first (what the score costs alone)."""
  before = set(scoring.cache_seconds)
  scoring.used = set()
  start = time.perf_counter()
  out = np.asarray(SCORES[name](scoring), np.float64)
  elapsed = time.perf_counter() - start
  new = sum(v for k, v in scoring.cache_seconds.items() if k not in before)
  return out, elapsed - new + sum(scoring.cache_seconds[k] for k in scoring.used)


def flat(x) -> np.ndarray:
  return np.reshape(np.asarray(x, np.float64), (len(x), -1))


@register_score("neg_elbo")
def neg_elbo(scoring: Scoring) -> np.ndarray:
  """-ELBO (nats): minus the mean of the num_samples importance log-weights."""
  return -scoring.estimates()["elbo"]


@register_score("neg_log_px")
def neg_log_px(scoring: Scoring) -> np.ndarray:
  """-log p(x) (nats): the num_samples-sample importance-weighted bound (Burda et al., 2015)."""
  return -scoring.estimates()["iwae"]


@register_score("bce_at_mean")
def bce_at_mean(scoring: Scoring) -> np.ndarray:
  """Binary cross-entropy of x against the decoder's mean at z = mu (nats, summed over pixels)."""
  probs = np.clip(scoring.reconstruction(), 1e-7, 1 - 1e-7)
  x = flat(scoring.x_NxHxWxC)
  return -np.sum(x * np.log(probs) + (1 - x) * np.log1p(-probs), axis=1)


@register_score("mse_at_mean")
def mse_at_mean(scoring: Scoring) -> np.ndarray:
  """Squared error of x against the decoder's mean at z = mu (summed over pixels)."""
  return np.sum((flat(scoring.x_NxHxWxC) - scoring.reconstruction()) ** 2, axis=1)


def mahalanobis_distance(
  reference_NxL: np.ndarray, z_MxL: np.ndarray, ridge: float = 1e-6
) -> np.ndarray:
  """sqrt((z - m)^T S^-1 (z - m)) with m, S the mean and covariance of the reference rows
  (S + ridge I: a collapsed latent dimension has zero variance)."""
  reference = np.asarray(reference_NxL, np.float64)
  mean_L = reference.mean(0)
  cov_LxL = np.cov(reference, rowvar=False) + ridge * np.eye(reference.shape[1])
  d_MxL = np.asarray(z_MxL, np.float64) - mean_L
  return np.sqrt(np.einsum("ml,ml->m", d_MxL, np.linalg.solve(cov_LxL, d_MxL.T).T))


@register_score("mahalanobis")
def mahalanobis(scoring: Scoring) -> np.ndarray:
  """Mahalanobis distance of mu under the training images' codes."""
  return mahalanobis_distance(scoring.codes(train=True), scoring.codes())


def compressed_bits(x_NxHxWxC) -> np.ndarray:
  """Bits of each image as 8-bit pixels (round(255 x)) compressed by zlib at level 9: the
  complexity estimate L(x) of Serra et al. (2020), who used PNG (zlib with filters)."""
  x_u8 = np.round(np.clip(flat(x_NxHxWxC), 0, 1) * 255).astype(np.uint8)
  return np.array([8 * len(zlib.compress(row.tobytes(), 9)) for row in x_u8], np.float64)


@register_score("complexity_corrected")
def complexity_corrected(scoring: Scoring) -> np.ndarray:
  """-log2 P(x) - L(x) (bits; Serra et al., 2020): the IWAE -log p(x) of the 8-bit image,
  its density over [0, 1]^D turned into the probability of its 1/256-wide bins (+ 8 D bits),
  minus its zlib length. Images that any compressor finds simple lose their advantage."""
  pixels = flat(scoring.x_NxHxWxC).shape[1]
  neg_log2_p = scoring.estimates()["iwae"] * (-1 / np.log(2)) + 8 * pixels
  return neg_log2_p - scoring.cached("compressed_bits", lambda: compressed_bits(scoring.x_NxHxWxC))


@register_score("likelihood_ratio")
def likelihood_ratio(scoring: Scoring) -> np.ndarray:
  """-(log p(x) - log p_background(x)) (nats; Ren et al., 2019): the background model, the same
  VAE trained on perturbed images (``perturb``), explains the population-level statistics
  (background, simple images) that inflate both likelihoods."""
  return scoring.estimates(background=True)["iwae"] - scoring.estimates()["iwae"]


def perturb(x_u8, key: jax.Array, rate: float) -> np.ndarray:
  """uint8 images with each pixel replaced, with probability rate, by a uniform draw from
  0..255 (Ren et al.'s background training data; they use rates 0.1-0.2)."""
  x_u8 = np.asarray(x_u8)
  replace_key, value_key = jax.random.split(key)
  replace = np.asarray(jax.random.bernoulli(replace_key, rate, x_u8.shape))
  noise = np.asarray(jax.random.randint(value_key, x_u8.shape, 0, 256))
  return np.where(replace, noise, x_u8).astype(np.uint8)
