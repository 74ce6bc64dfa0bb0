"""Bits-back coding with ANS (Townsend, Bird and Barber 2019, BB-ANS): a VAE as a lossless coder.

One ANS stack (constriction's AnsCoder, 32-bit words) codes every image in turn:

  compress x:   pop z ~ Q(z|x) (the bits back), push x with p(x|z), push z with P(z)
  decompress:   pop z with P(z), pop x with p(x|z), push z with Q(z|x) (the bits returned)

so an image costs -log p(x|z) - log P(z) + log Q(z|x) bits: its negative ELBO, up to the
discretization. Latents are discretized as the paper does: each dimension's prior N(0, 1) is
cut into 2^prior_precision buckets of equal mass (P uniform over them), z is the bucket's
centre (the prior's quantile at its middle mass), and Q(bucket) the posterior Gaussian's
mass in it. Pixels: Bernoulli of sigmoid(logits) for binary images; the 256 levels of the
beta-binomial or the discretized logistic for uint8 images (losses).

Batched: images go in batches whose pops all come first (the batch's z), then its pixels,
then its z with the prior, so the network runs once per batch in each direction. A batch can
only pop what the stack holds, so batches start at one image and grow with the stack
(``schedule``); the stack starts with ``INITIAL_WORDS`` words of a fixed pseudo-random
sequence (the bits the first image borrows), which decompression gets back and checks.

Determinism: the coder's probabilities come from the network's float32 outputs, which must be
bit-identical when decompressing: the same parameters, the same compiled programs (batch
shapes are padded to powers of two, the same in both directions) on the same backend, jax
version and CPU. vae_jax.compression records all of it in the file and refuses a mismatch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import constriction
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special

from vae_jax import losses

INITIAL_WORDS = 32  # 1,024 bits of a fixed sequence at the bottom of the stack.
MAX_BATCH = 1024
TABLE_ROWS = 256  # Pixels whose 254-level table is computed in one step.
TABLE_CALL = 8192  # Pixels per call of the tables past that many: one compiled shape.
PRIOR_PRECISION = 8  # 2^8 buckets of equal prior mass per latent dimension (the paper's).
LIKELIHOODS = losses.DISCRETE  # The likelihoods it codes.
_MODELS = constriction.stream.model


def initial_words() -> np.ndarray:
  """The stack's first words: a fixed sequence, the same on every machine (PCG64's raw
  output, which numpy keeps stable across versions), each word nonzero."""
  raw = np.random.PCG64(20190101).random_raw(INITIAL_WORDS // 2).astype("<u8")
  return raw.view("<u4").astype(np.uint32) | np.uint32(1)


def bucket_edges(precision: int) -> jax.Array:
  """The 2^precision + 1 edges of N(0, 1)'s buckets of equal mass (-inf and +inf at the ends)."""
  return special.ndtri(jnp.arange((1 << precision) + 1, dtype=jnp.float32) / (1 << precision))


def bucket_centres(precision: int) -> jax.Array:
  """Each bucket's value of z: the prior's quantile at the middle of the bucket's mass."""
  return special.ndtri((jnp.arange(1 << precision, dtype=jnp.float32) + 0.5) / (1 << precision))


def bucket_masses(mu_BxL, logvar_BxL, precision: int) -> jax.Array:
  """Q(bucket) of each latent, B x L x 2^precision: N(mu, sigma)'s mass between the edges,
  from the side of the nearer tail (no 1 - 1 cancellation far from the mean)."""
  t = (bucket_edges(precision) - mu_BxL[..., None]) * jnp.exp(-0.5 * logvar_BxL)[..., None]
  lower, upper = t[..., :-1], t[..., 1:]
  left = special.ndtr(upper) - special.ndtr(lower)
  right = special.ndtr(-lower) - special.ndtr(-upper)
  return jnp.where(lower > 0, right, left)


def schedule(stack_bits: int, bits_per_image: int, remaining: int) -> int:
  """The next batch's size: what the stack can pay the pops of twice over, in [1, MAX_BATCH]."""
  return int(max(1, min(MAX_BATCH, remaining, stack_bits // (2 * bits_per_image))))


def padded(n: int) -> int:
  """The batch shape n rows are computed in: the next power of two (few compiled shapes: a
  program compiles in about the time it codes a few hundred images)."""
  return 1 << max(0, int(n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("apply_fn", "precision"))
def _posterior(params, apply_fn, x_BxHxWxC, *, precision: int):
  mu_BxL, logvar_BxL = apply_fn({"params": params}, x_BxHxWxC, method="encode")
  return bucket_masses(mu_BxL, logvar_BxL, precision)


@functools.partial(jax.jit, static_argnames=("apply_fn", "precision", "likelihood"))
def _observation(params, apply_fn, z_idx_BxL, *, precision: int, likelihood: str):
  """Per-pixel parameters: P(1) (bernoulli, B x D), or the likelihood's two (B x D x 2)."""
  logits = apply_fn({"params": params}, bucket_centres(precision)[z_idx_BxL], method="decode")
  if likelihood == "bernoulli":
    return jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
  channels = logits.shape[-1] // 2
  both = jnp.stack([logits[..., :channels], logits[..., channels:]], -1)
  return both.reshape(logits.shape[0], -1, 2)


PROBS = {  # A 256-level likelihood's table: (first, second parameter, ends=...) -> P.
  "discretized_logistic": losses.discretized_logistic_probs,
  "beta_binomial": losses.beta_binomial_probs,
}


@functools.partial(jax.jit, static_argnames="likelihood")
def _ends(params_Nx2, likelihood: str):
  """P(level 0), P(level 255) and P(a level between) of each pixel: 3 x N (a stack on the
  host: XLA's CPU fills an N x 3 one ~10x slower)."""
  return jnp.stack(PROBS[likelihood](params_Nx2[:, 0], params_Nx2[:, 1], ends=True))


@functools.partial(jax.jit, static_argnames="likelihood")
def _between(params_Mx2, likelihood: str):
  """P(level k | 0 < k < 255) of each pixel, k = 1..254 (up to a factor per row): M x 254; TABLE_ROWS
  rows at a time (a loop), so that each step's intermediates stay in cache (1.5x on XLA's
  CPU against all rows at once)."""

  def table(p_Rx2):
    if likelihood == "beta_binomial":  # From the logs, scaled to a largest entry of 1.
      log_p = losses.beta_binomial_log_probs(p_Rx2[:, 0], p_Rx2[:, 1])[:, 1:-1]
      p = jnp.exp(log_p - log_p.max(-1, keepdims=True))
    else:
      p = PROBS[likelihood](p_Rx2[:, 0], p_Rx2[:, 1])[:, 1:-1]
    # A row whose levels all underflowed (a pixel the model is sure is 0 or 255, yet is not)
    # is coded as uniform: constriction needs some mass to spread.
    usable = jnp.isfinite(p).all(-1, keepdims=True) & (p.sum(-1, keepdims=True) > 0)
    return jnp.where(usable, p, 1.0)

  rows = params_Mx2.shape[0]
  if rows <= TABLE_ROWS or rows % TABLE_ROWS:
    return table(params_Mx2)
  return jax.lax.map(table, params_Mx2.reshape(-1, TABLE_ROWS, 2)).reshape(rows, -1)


def padded_call(fn: Callable, rows_Nx, *args, rows_axis: int = 0, **kwargs) -> np.ndarray:
  """fn(*args, rows padded (see padded), **kwargs) as float64 numpy, the first N rows of
  its rows_axis: the compiled shapes are few, and the same in both directions (so are the
  floats)."""
  n = len(rows_Nx)
  pad = np.zeros((padded(n) - n, *rows_Nx.shape[1:]), rows_Nx.dtype)
  # float64 for constriction: its leaky quantizer, given float32 tables, can leave a level
  # of 1e-29 with no mass (a panic); the widening is exact, so both directions agree.
  out = np.asarray(fn(*args, np.concatenate([rows_Nx, pad]), **kwargs), np.float64)
  return out[:n] if rows_axis == 0 else out[:, :n]


def between_tables(params_Mx2: np.ndarray, likelihood: str) -> np.ndarray:
  """_between's tables (float64, M x 254): in calls of TABLE_CALL pixels when there are more
  (a batch of 1,024 MNIST images has ~130,000), so the compiled shapes stay few."""
  if len(params_Mx2) <= TABLE_CALL:
    return padded_call(_between, params_Mx2, likelihood=likelihood)
  m = len(params_Mx2)
  out_Mx254 = np.empty((m, losses.LEVELS - 2), np.float64)
  for start in range(0, m, TABLE_CALL):
    rows = params_Mx2[start : start + TABLE_CALL]
    chunk = np.concatenate([rows, np.zeros((TABLE_CALL - len(rows), 2), rows.dtype)])
    out_Mx254[start : start + len(rows)] = np.asarray(_between(chunk, likelihood))[: len(rows)]
  return out_Mx254


class Codec:
  """A trained model's coder: ``encode(symbols) -> (words, batch sizes)`` and back.

  symbols: what the likelihood codes per pixel, N x H x W x C int: 0/1 (bernoulli) or 0..255
  (beta_binomial, discretized_logistic). The batch sizes are part of the code (vae_jax.compression's header
  holds them).
  """

  def __init__(
    self,
    params,
    apply_fn: Callable,
    likelihood: str,
    latent_dim: int,
    precision: int = PRIOR_PRECISION,
  ):
    if likelihood not in LIKELIHOODS:
      raise ValueError(
        f"likelihood {likelihood!r}: bits-back coding needs a discrete likelihood "
        "('bernoulli' for binary images, 'beta_binomial' or 'discretized_logistic' for 256 levels)"
      )
    self.params, self.apply_fn, self.likelihood = params, apply_fn, likelihood
    self.latent_dim, self.precision = latent_dim, precision
    self.levels = 2 if likelihood == "bernoulli" else losses.LEVELS

  def _posterior(self, symbols_BxHxWxC) -> np.ndarray:
    """Q(bucket) of every latent of the batch, BL x 2^precision (image-major)."""
    x_BxHxWxC = symbols_BxHxWxC.astype(np.float32) / np.float32(self.levels - 1)
    q_BxLxK = padded_call(
      _posterior, x_BxHxWxC, self.params, self.apply_fn, precision=self.precision
    )
    return q_BxLxK.reshape(-1, q_BxLxK.shape[-1])

  def _pixels(self, z_idx_BL) -> np.ndarray:
    """Each pixel's parameters given the latents' buckets: B x D (bernoulli) or B x D x 2."""
    return padded_call(
      _observation,
      z_idx_BL.reshape(-1, self.latent_dim),
      self.params,
      self.apply_fn,
      precision=self.precision,
      likelihood=self.likelihood,
    )

  # 256 levels are coded in two steps, the same code length: which of level 0, level 255 or
  # a level between (every pixel), then which level between (those pixels alone), so the
  # 254-entry tables are computed for the few pixels that need them (MNIST: 1 in 6).
  def _push_x(self, coder, x_BD, pixels):
    categorical = _MODELS.Categorical(perfect=False)
    if self.likelihood == "bernoulli":
      coder.encode_reverse(x_BD, _MODELS.Bernoulli(perfect=False), pixels.reshape(-1))
      return
    params_BDx2, likelihood = pixels.reshape(-1, 2), self.likelihood
    end_BD = np.where(x_BD == 0, 0, np.where(x_BD == self.levels - 1, 1, 2)).astype(np.int32)
    between_M = np.flatnonzero(end_BD == 2)
    if len(between_M):
      table_Mx254 = between_tables(params_BDx2[between_M], likelihood)
      coder.encode_reverse(x_BD[between_M] - 1, categorical, table_Mx254)
    coder.encode_reverse(
      end_BD,
      categorical,
      np.ascontiguousarray(padded_call(_ends, params_BDx2, likelihood=likelihood, rows_axis=1).T),
    )

  def _pop_x(self, coder, pixels) -> np.ndarray:
    categorical = _MODELS.Categorical(perfect=False)
    if self.likelihood == "bernoulli":
      return coder.decode(_MODELS.Bernoulli(perfect=False), pixels.reshape(-1))
    params_BDx2, likelihood = pixels.reshape(-1, 2), self.likelihood
    end_BD = coder.decode(
      categorical,
      np.ascontiguousarray(padded_call(_ends, params_BDx2, likelihood=likelihood, rows_axis=1).T),
    )
    x_BD = np.where(end_BD == 0, 0, self.levels - 1).astype(np.int32)
    between_M = np.flatnonzero(end_BD == 2)
    if len(between_M):
      table_Mx254 = between_tables(params_BDx2[between_M], likelihood)
      x_BD[between_M] = coder.decode(categorical, table_Mx254) + 1
    return x_BD

  def encode(self, symbols_NxHxWxC: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(the stack's words, the batch sizes) for the images' symbols, in order."""
    symbols = np.asarray(symbols_NxHxWxC, np.int32)
    coder = constriction.stream.stack.AnsCoder(initial_words())
    prior = _MODELS.Uniform(1 << self.precision)
    sizes, start = [], 0
    while start < len(symbols):
      size = schedule(coder.num_bits(), self.latent_dim * self.precision, len(symbols) - start)
      batch_BxHxWxC = symbols[start : start + size]
      z_idx_BL = coder.decode(_MODELS.Categorical(perfect=False), self._posterior(batch_BxHxWxC))
      self._push_x(coder, batch_BxHxWxC.reshape(-1), self._pixels(z_idx_BL))
      coder.encode_reverse(z_idx_BL, prior)
      sizes.append(size)
      start += size
    return coder.get_compressed(), sizes

  def decode(self, words: np.ndarray, sizes: list[int], image_shape: tuple[int, ...]) -> np.ndarray:
    """The images' symbols (N x H x W x C int32) from encode's words and batch sizes;
    ValueError when the stack does not end with the initial words (a corrupt code)."""
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, np.uint32))
    prior = _MODELS.Uniform(1 << self.precision)
    batches = []
    for size in reversed(sizes):
      z_idx_BL = coder.decode(prior, size * self.latent_dim)
      x_BxHxWxC = self._pop_x(coder, self._pixels(z_idx_BL)).reshape(size, *image_shape)
      coder.encode_reverse(z_idx_BL, _MODELS.Categorical(perfect=False), self._posterior(x_BxHxWxC))
      batches.append(x_BxHxWxC)
    if not np.array_equal(coder.get_compressed(), initial_words()):
      raise ValueError("the code did not end at its initial words: the file is corrupt")
    return np.concatenate(batches[::-1]) if batches else np.zeros((0, *image_shape), np.int32)
