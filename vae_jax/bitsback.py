"""Bits-back coding with ANS (Townsend, Bird and Barber 2019, BB-ANS): a VAE as a lossless coder.

One ANS stack (constriction's AnsCoder, 32-bit words) codes every image in turn:

  compress x:   pop z ~ Q(z|x) (the bits back), push x with p(x|z), push z with P(z)
  decompress:   pop z with P(z), pop x with p(x|z), push z with Q(z|x) (the bits returned)

so an image costs -log p(x|z) - log P(z) + log Q(z|x) bits: its negative ELBO, up to the
discretization. Latents are discretized as the paper does: each dimension's prior N(0, 1) is
cut into 2^prior_precision buckets of equal mass (P uniform over them), z is the bucket's
centre (the prior's quantile at its middle mass), and Q(bucket) the posterior Gaussian's
mass in it. Pixels: Bernoulli of sigmoid(logits) for binary images; the 256 levels of the
discretized logistic for uint8 images (losses.discretized_logistic_log_probs).

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

WORD_BITS = 32
INITIAL_WORDS = 32  # 1,024 bits of a fixed sequence at the bottom of the stack.
MAX_BATCH = 1024
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
  """The batch shape n images are computed in: the next power of two (few compiled shapes)."""
  return 1 << max(0, int(n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("apply_fn", "precision"))
def _posterior(params, apply_fn, x_BxHxWxC, *, precision: int):
  mu_BxL, logvar_BxL = apply_fn({"params": params}, x_BxHxWxC, method="encode")
  return bucket_masses(mu_BxL, logvar_BxL, precision)


@functools.partial(jax.jit, static_argnames=("apply_fn", "precision", "likelihood"))
def _observation(params, apply_fn, z_idx_BxL, *, precision: int, likelihood: str):
  """Per-pixel parameters: P(1) (bernoulli, B x D), or (location, log scale) (B x D x 2)."""
  logits = apply_fn({"params": params}, bucket_centres(precision)[z_idx_BxL], method="decode")
  if likelihood == "bernoulli":
    return jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
  channels = logits.shape[-1] // 2
  both = jnp.stack([logits[..., :channels], logits[..., channels:]], -1)
  return both.reshape(logits.shape[0], -1, 2)


@jax.jit
def _ends(loc_scale_Nx2):
  """P(level 0), P(level 255) and P(a level between) of each pixel: N x 3."""
  probs = losses.discretized_logistic_probs(loc_scale_Nx2[:, 0], loc_scale_Nx2[:, 1], ends=True)
  return probs


@jax.jit
def _middle(loc_scale_Mx2):
  """P(level k | 0 < k < 255) of each pixel, k = 1..254 (unnormalized): M x 254."""
  return losses.discretized_logistic_probs(loc_scale_Mx2[:, 0], loc_scale_Mx2[:, 1])[:, 1:-1]


def _padded_rows(fn, rows_Nx2):
  """fn on rows padded to a power of two (the same compiled shapes in both directions)."""
  pad = np.zeros((padded(len(rows_Nx2)) - len(rows_Nx2), 2), rows_Nx2.dtype)
  return np.asarray(fn(np.concatenate([rows_Nx2, pad])))[: len(rows_Nx2)]


class Codec:
  """A trained model's coder: ``encode(symbols_NxD) -> words``, ``decode(words) -> symbols``.

  symbols: what the likelihood codes per pixel: 0/1 (bernoulli) or 0..255
  (discretized_logistic), N x H x W x C int. The batch sizes are part of the code (the header
  of vae_jax.compression holds them).
  """

  def __init__(
    self, params, apply_fn: Callable, likelihood: str, latent_dim: int, precision: int = 8
  ):
    if likelihood not in ("bernoulli", "discretized_logistic"):
      raise ValueError(
        f"likelihood {likelihood!r}: bits-back coding needs a discrete likelihood "
        "('bernoulli' for binary images, 'discretized_logistic' for 256 levels)"
      )
    self.params, self.apply_fn, self.likelihood = params, apply_fn, likelihood
    self.latent_dim, self.precision = latent_dim, precision
    self.levels = 2 if likelihood == "bernoulli" else losses.LEVELS

  def _net(self, fn, batch, **kw):
    """fn on a batch padded to its compiled shape: numpy float32 rows of the batch."""
    n = len(batch)
    pad = np.zeros((padded(n) - n, *batch.shape[1:]), batch.dtype)
    out = fn(
      self.params, self.apply_fn, np.concatenate([batch, pad]), precision=self.precision, **kw
    )
    return np.asarray(out[:n])

  def _q(self, symbols):
    x = symbols.astype(np.float32) / np.float32(self.levels - 1)
    q = self._net(_posterior, x)
    return q.reshape(-1, q.shape[-1])

  def _obs(self, z_idx):
    return self._net(_observation, z_idx.reshape(-1, self.latent_dim), likelihood=self.likelihood)

  # 256 levels are coded in two steps, the same code length: which of level 0, level 255 or
  # a level between (every pixel), then which level between (those pixels alone), so the
  # 254-entry tables are computed for the few pixels that need them (MNIST: 1 in 6).
  def _push_x(self, coder, x_flat, obs):
    categorical = _MODELS.Categorical(perfect=False)
    if self.likelihood == "bernoulli":
      coder.encode_reverse(x_flat, _MODELS.Bernoulli(perfect=False), obs.reshape(-1))
      return
    rows = obs.reshape(-1, 2)
    end = np.where(x_flat == 0, 0, np.where(x_flat == self.levels - 1, 1, 2)).astype(np.int32)
    between = np.flatnonzero(end == 2)
    if len(between):
      coder.encode_reverse(x_flat[between] - 1, categorical, _padded_rows(_middle, rows[between]))
    coder.encode_reverse(end, categorical, _padded_rows(_ends, rows))

  def _pop_x(self, coder, obs):
    categorical = _MODELS.Categorical(perfect=False)
    if self.likelihood == "bernoulli":
      return coder.decode(_MODELS.Bernoulli(perfect=False), obs.reshape(-1))
    rows = obs.reshape(-1, 2)
    end = coder.decode(categorical, _padded_rows(_ends, rows))
    x_flat = np.where(end == 0, 0, self.levels - 1).astype(np.int32)
    between = np.flatnonzero(end == 2)
    if len(between):
      x_flat[between] = coder.decode(categorical, _padded_rows(_middle, rows[between])) + 1
    return x_flat

  def encode(self, symbols_NxHxWxC: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(the stack's words, the batch sizes) for the images' symbols, in order."""
    symbols = np.asarray(symbols_NxHxWxC, np.int32)
    coder = constriction.stream.stack.AnsCoder(initial_words())
    prior = _MODELS.Uniform(1 << self.precision)
    sizes, start = [], 0
    while start < len(symbols):
      size = schedule(coder.num_bits(), self.latent_dim * self.precision, len(symbols) - start)
      batch = symbols[start : start + size]
      z = coder.decode(_MODELS.Categorical(perfect=False), self._q(batch))  # Bits back.
      self._push_x(coder, batch.reshape(-1), self._obs(z))
      coder.encode_reverse(z, prior)
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
      z = coder.decode(prior, size * self.latent_dim)
      x = self._pop_x(coder, self._obs(z)).reshape(size, *image_shape)
      coder.encode_reverse(z, _MODELS.Categorical(perfect=False), self._q(x))
      batches.append(x)
    rest = coder.get_compressed()
    if not np.array_equal(rest, initial_words()):
      raise ValueError("the code did not end at its initial words: the file is corrupt")
    return np.concatenate(batches[::-1]) if batches else np.zeros((0, *image_shape), np.int32)
