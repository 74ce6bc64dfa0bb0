"""The reference loss: binary cross-entropy summed over pixels + KL(q(z|x) || N(0, I)).

Per-example functions return nats per example (summed over every pixel and channel, or
over latent dims); images keep their shape (B x H x W x C, or K x B x H x W x C with
``batch_ndim=2``);
``vae_loss`` sums over the batch, as the reference does (reduction='sum'). Reported
figures divide those sums by the number of examples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@jax.custom_jvp
def bce_with_logits(logits, x):
  """Elementwise -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))], stable for any l.

  Its derivative is written out (d/dl = sigmoid(l) - x, d/dx = -l): autodiff of the
  log1p(exp(-|l|)) form costs several more transcendental passes per step.
  """
  return jnp.maximum(logits, 0.0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _bce_with_logits_jvp(primals, tangents):
  logits, x = primals
  logits_dot, x_dot = tangents
  out = bce_with_logits(logits, x)
  out_dot = (jax.nn.sigmoid(logits) - x) * logits_dot
  if not isinstance(x_dot, jax.custom_derivatives.SymbolicZero):
    out_dot = out_dot - logits * x_dot
  return out, out_dot


bce_with_logits.defjvp(_bce_with_logits_jvp, symbolic_zeros=True)


def flat(a, batch_ndim: int = 1):
  """B x H x W x C -> B x D (a free reshape): elementwise work then runs on a long minor axis
  (XLA's CPU loops over a trailing C = 1 axis are several times slower)."""
  return a.reshape(*a.shape[:batch_ndim], -1)


def sum_per_example(a, batch_ndim: int = 1):
  """Sum over every axis after the first batch_ndim (one flat reduction, as for B x D data)."""
  return jnp.sum(flat(a, batch_ndim), axis=-1)


def bce_per_example(
  logits_BxHxWxC: jax.Array, x_BxHxWxC: jax.Array, batch_ndim: int = 1
) -> jax.Array:
  """-sum_pixels [x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))]: nats per example."""
  logits_BxD, x_BxD = jnp.broadcast_arrays(logits_BxHxWxC, x_BxHxWxC)
  return sum_per_example(
    bce_with_logits(flat(logits_BxD, batch_ndim), flat(x_BxD, batch_ndim)), batch_ndim
  )


def kl_per_example(mu_BxL: jax.Array, logvar_BxL: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum (1 + logvar - mu^2 - exp(logvar)): nats
  per example (shape B), summed over the L latent dimensions."""
  return -0.5 * jnp.sum(1.0 + logvar_BxL - jnp.square(mu_BxL) - jnp.exp(logvar_BxL), axis=-1)


def vae_loss(logits_BxD, x_BxD, mu_BxL, logvar_BxL, beta: float = 1.0):
  """Batch sums (loss, bce, kl); loss = bce + beta * kl (beta = 1 is the reference)."""
  bce = jnp.sum(bce_per_example(logits_BxD, x_BxD))
  kl = jnp.sum(kl_per_example(mu_BxL, logvar_BxL))
  return bce + beta * kl, bce, kl


# Ablation variants. Each returns nats per example unless it says otherwise.

LIKELIHOODS = (
  "bernoulli",
  "continuous_bernoulli",
  "gaussian",
  "normal",
  "discretized_logistic",
  "beta_binomial",
)
# Parameters per pixel of each likelihood: the decoder outputs C x this many channels.
PIXEL_PARAMS = {"discretized_logistic": 2, "beta_binomial": 2}
# A probability per value: a test NLL, a code.
DISCRETE = ("bernoulli", "discretized_logistic", "beta_binomial")
WITH_SIGMA = ("gaussian", "normal")  # A sigma: config gaussian_sigma, or 0 for a learned one.
LEVELS = 256  # Gray levels of the discrete likelihoods: uint8 pixels, x = k / 255.
# The discretized logistic's smallest log scale (in [0, 1] units, 9e-4: a quarter of a level;
# PixelCNN++'s bound): a scale headed to 0 would overflow exp(-log scale).
MIN_LOG_SCALE = -7.0
# The beta-binomial's log alpha and log beta are kept in [-10, 10]: a decoder that drives a
# border pixel's alpha toward 0 (P(level 0) -> 1) reaches exp(-88) = 0 and lgamma(0) = inf
# (seen at epoch 48 of 784-200-50 at Adam 1e-3), and past e^10 float32's lgamma differences
# lose their digits; at -10 the other levels of a pixel keep ~2e-4 of its mass.
LOG_BB_LIMIT = 10.0


def bb_params(log_alpha, log_beta):
  """(alpha, beta) of the decoder's log alpha and log beta, each clipped to +-LOG_BB_LIMIT."""
  clip = functools.partial(jnp.clip, min=-LOG_BB_LIMIT, max=LOG_BB_LIMIT)
  return jnp.exp(clip(log_alpha)), jnp.exp(clip(log_beta))


def discretized_logistic_log_probs(mean, log_scale, levels: int = LEVELS):
  """log P(k) for k = 0..levels-1 (a last axis of that length): a logistic of location mean
  and scale exp(log_scale) in [0, 1] units (neither bounded: a location below 0 puts level 0
  near certainty), each level k / (levels - 1) the mass of its bin of width 1 / (levels - 1),
  the first and last bins stretched to -inf and +inf (PixelCNN++'s likelihood, Salimans et
  al. 2017); the log scale at least MIN_LOG_SCALE. With levels = 2 it is the Bernoulli of
  logit (mean - 1/2) / scale."""
  mean = mean[..., None]
  inv_scale = jnp.exp(-jnp.maximum(log_scale, MIN_LOG_SCALE))[..., None]
  edges = (jnp.arange(1, levels) - 0.5) / (levels - 1)  # The levels - 1 inner bin edges.
  upper = (edges - mean) * inv_scale  # Standardized; P(x <= edge) = sigmoid(upper).
  # log(sigmoid(b) - sigmoid(a)) = log_sigmoid(b) + log1mexp(a - b) + log_sigmoid(-a): stable
  # in both tails; the first bin is log_sigmoid(b), the last log_sigmoid(-a).
  lower_pad = jnp.concatenate([jnp.full_like(upper[..., :1], -jnp.inf), upper], -1)
  upper_pad = jnp.concatenate([upper, jnp.full_like(upper[..., :1], jnp.inf)], -1)
  a, b = lower_pad, upper_pad
  middle = (
    jax.nn.log_sigmoid(b) + jax.nn.log_sigmoid(-a) + jnp.log(-jnp.expm1(jnp.minimum(a - b, -1e-12)))
  )
  first = jax.nn.log_sigmoid(b)
  last = jax.nn.log_sigmoid(-a)
  k = jnp.arange(levels)
  return jnp.where(k == 0, first, jnp.where(k == levels - 1, last, middle))


def mean_of(logits, likelihood: str):
  """Each pixel's mean under the likelihood, from the decoder's logits (image grids, samples):
  sigmoid(logits); the location (discretized logistic, clipped to [0, 1]); alpha / (alpha +
  beta) (beta-binomial); the logits themselves (normal: real values)."""
  if likelihood == "normal":
    return logits
  if likelihood in PIXEL_PARAMS:
    channels = logits.shape[-1] // 2
    first, second = logits[..., :channels], logits[..., channels:]
    if likelihood == "discretized_logistic":
      return jnp.clip(first, 0.0, 1.0)
    return jax.nn.sigmoid(first - second)
  return jax.nn.sigmoid(logits)


def beta_binomial_probs(log_alpha, log_beta, levels: int = LEVELS, ends: bool = False):
  """P(k) of beta_binomial_log_probs (levels on a last axis); ends=True: the tuple (P(0), P(n),
  P(any level between)) only, from the closed forms of the two ends."""
  if not ends:
    return jnp.exp(beta_binomial_log_probs(log_alpha, log_beta, levels))
  n = levels - 1
  alpha, beta = bb_params(log_alpha, log_beta)
  lg = jax.scipy.special.gammaln
  common = lg(alpha + beta) - lg(n + alpha + beta)
  first = jnp.exp(lg(n + beta) - lg(beta) + common)
  last = jnp.exp(lg(n + alpha) - lg(alpha) + common)
  return first, last, jnp.maximum(1.0 - first - last, 0.0)


def discretized_logistic_probs(mean, log_scale, levels: int = LEVELS, ends: bool = False):
  """P(k) of discretized_logistic_log_probs, cheaper (the coder's tables: one sigmoid per bin
  edge): differences of the logistic's CDF at the edges, each taken in the tail it lies in
  (1 - CDF above the location) so the small masses of either tail keep their digits.
  ends=True: the tuple (P(0), P(levels - 1), P(any level between)) only (three arrays: XLA's
  CPU fills an N x 3 stack of them ~10x slower)."""
  inner = (jnp.arange(1, levels) - 0.5) / (levels - 1)
  if ends:
    inner = inner[jnp.array([0, levels - 2])]
  t = (inner - mean[..., None]) * jnp.exp(-jnp.maximum(log_scale, MIN_LOG_SCALE))[..., None]
  if ends:  # The first bin, the last bin, and what lies between their edges.
    first, last = jax.nn.sigmoid(t[..., 0]), jax.nn.sigmoid(-t[..., 1])
    between = jnp.where(
      t[..., 0] > 0,
      jax.nn.sigmoid(-t[..., 0]) - jax.nn.sigmoid(-t[..., 1]),
      jax.nn.sigmoid(t[..., 1]) - jax.nn.sigmoid(t[..., 0]),
    )
    return first, last, between
  ones = jnp.ones_like(t[..., :1])
  below = jnp.diff(jnp.concatenate([0 * ones, jax.nn.sigmoid(t), ones], -1), axis=-1)
  above = -jnp.diff(jnp.concatenate([ones, jax.nn.sigmoid(-t), 0 * ones], -1), axis=-1)
  # Bin k's lower edge is edge k - 1: above the location its mass is taken from the upper tail.
  lower_edge = jnp.concatenate([-jnp.inf * ones, t], -1)
  return jnp.where(lower_edge > 0, above, below)


def beta_binomial_log_probs(log_alpha, log_beta, levels: int = LEVELS):
  """log P(k), k = 0..levels-1 (a last axis), of the beta-binomial of n = levels - 1 trials
  with alpha = exp(log_alpha), beta = exp(log_beta) (Townsend et al. 2019's likelihood of
  8-bit pixels): from log P(0) by the ratio P(k+1) / P(k) = (n-k)(k+alpha) / ((k+1)(n-k-1+beta)),
  a cumulative sum (two logs per level, no lgamma past the first)."""
  n = levels - 1
  alpha, beta = (p[..., None] for p in bb_params(log_alpha, log_beta))
  k = jnp.arange(n, dtype=jnp.float32)
  log_p0 = (
    jax.scipy.special.gammaln(n + beta[..., 0])
    + jax.scipy.special.gammaln(alpha[..., 0] + beta[..., 0])
    - jax.scipy.special.gammaln(n + alpha[..., 0] + beta[..., 0])
    - jax.scipy.special.gammaln(beta[..., 0])
  )[..., None]
  steps = jnp.log(((n - k) * (k + alpha)) / ((k + 1) * (n - k - 1 + beta)))
  return jnp.concatenate([log_p0, log_p0 + blocked_cumsum(steps)], -1)


def blocked_cumsum(x_NxK, block: int = 16):
  """cumsum over the last axis as two small matmuls (within blocks of 16, then the blocks'
  totals carried): on XLA's CPU ~1.4x the speed of jnp.cumsum over 255 levels, and the same
  compiled program gives the same floats (what the coder's tables need)."""
  k = x_NxK.shape[-1]
  blocks = -(-k // block)
  x = jnp.pad(x_NxK, [(0, 0)] * (x_NxK.ndim - 1) + [(0, blocks * block - k)])
  x = x.reshape(*x_NxK.shape[:-1], blocks, block)
  within = jnp.einsum("...bk,kj->...bj", x, jnp.triu(jnp.ones((block, block))), precision="highest")
  before = jnp.triu(jnp.ones((blocks, blocks)), 1)
  carried = jnp.einsum("...b,bc->...c", within[..., -1], before, precision="highest")
  return (within + carried[..., None]).reshape(*x_NxK.shape[:-1], -1)[..., :k]


def beta_binomial_nll(log_alpha, log_beta, x, levels: int = LEVELS):
  """-log P(k) elementwise for pixels x = k / (levels - 1): the beta-binomial's pmf,
  log C(n, k) + log B(k + alpha, n - k + beta) - log B(alpha, beta)."""
  n = levels - 1
  k = jnp.round(x * n)
  alpha, beta = bb_params(log_alpha, log_beta)
  lg = jax.scipy.special.gammaln
  return -(
    lg(n + 1.0)
    - lg(k + 1)
    - lg(n - k + 1)
    + lg(k + alpha)
    + lg(n - k + beta)
    - lg(n + alpha + beta)
    + lg(alpha + beta)
    - lg(alpha)
    - lg(beta)
  )


def discretized_logistic_nll(mean, log_scale, x, levels: int = LEVELS):
  """-log P(x) elementwise for pixels x = k / (levels - 1) (see discretized_logistic_log_probs),
  computed at the pixel's own bin only."""
  inv_scale = jnp.exp(-jnp.maximum(log_scale, MIN_LOG_SCALE))
  half = 0.5 / (levels - 1)
  a = jnp.where(x <= half, -jnp.inf, (x - half - mean) * inv_scale)
  b = jnp.where(x >= 1 - half, jnp.inf, (x + half - mean) * inv_scale)
  gap = jnp.where(jnp.isinf(a) | jnp.isinf(b), -jnp.inf, a - b)
  safe = jnp.where(jnp.isinf(gap), -1.0, gap)
  log_mass = (
    jax.nn.log_sigmoid(b)
    + jax.nn.log_sigmoid(-a)
    + jnp.where(jnp.isinf(gap), 0.0, jnp.log(-jnp.expm1(jnp.minimum(safe, -1e-12))))
  )
  return -log_mass


def continuous_bernoulli_log_norm(probs):
  """log C(lam) of the continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), elementwise.

  C(lam) = 2 atanh(1 - 2 lam) / (1 - 2 lam), and 2 at lam = 1/2; near 1/2 a Taylor series
  (log 2 + 4/3 t^2 + 104/45 t^4, t = lam - 1/2) avoids 0 / 0.
  """
  far = (probs < 0.49) | (probs > 0.51)
  safe = jnp.where(far, probs, 0.4)
  exact = jnp.log(jnp.abs(2.0 * jnp.arctanh(1.0 - 2.0 * safe))) - jnp.log(jnp.abs(1.0 - 2.0 * safe))
  t = probs - 0.5
  return jnp.where(far, exact, jnp.log(2.0) + 4.0 / 3.0 * t**2 + 104.0 / 45.0 * t**4)


def nll_per_example(
  logits: jax.Array,
  x: jax.Array,
  likelihood: str = "bernoulli",
  log_sigma: ArrayLike | None = None,
  batch_ndim: int = 1,
) -> jax.Array:
  """-log p(x | z) summed over pixels; the decoder's logits give the mean sigmoid(logits).

  bernoulli: the reference BCE. continuous_bernoulli: BCE - log C(sigmoid(logits)), a
  proper density on [0, 1]. gaussian: N(x; sigmoid(logits), exp(log_sigma)^2), log_sigma
  broadcast over pixels (a fixed value or learned parameters of the image's shape). normal:
  N(x; logits, exp(log_sigma)^2), the decoder's output the mean itself (real-valued data,
  such as another model's features). discretized_logistic: 256 levels of a logistic whose
  location and log scale the decoder outputs per pixel (logits of 2C channels).
  """
  if likelihood == "bernoulli":
    return bce_per_example(logits, x, batch_ndim)
  if likelihood in PIXEL_PARAMS:  # Channels: C of the first parameter, then C of the second.
    channels = logits.shape[-1] // 2
    nll_fn = discretized_logistic_nll if likelihood == "discretized_logistic" else beta_binomial_nll
    return sum_per_example(nll_fn(logits[..., :channels], logits[..., channels:], x), batch_ndim)
  logits, x = jnp.broadcast_arrays(logits, x)
  logits_BxD, x_BxD = flat(logits, batch_ndim), flat(x, batch_ndim)
  if likelihood == "continuous_bernoulli":
    probs = jnp.clip(jax.nn.sigmoid(logits_BxD), 1e-6, 1 - 1e-6)
    return jnp.sum(bce_with_logits(logits_BxD, x_BxD), -1) - jnp.sum(
      continuous_bernoulli_log_norm(probs), -1
    )
  if likelihood in WITH_SIGMA:
    if log_sigma is None:
      raise ValueError(f"likelihood {likelihood!r}: expected log_sigma (a scalar or one per pixel)")
    log_sigma = jnp.reshape(log_sigma, -1)
    mean_BxD = jax.nn.sigmoid(logits_BxD) if likelihood == "gaussian" else logits_BxD
    z = (x_BxD - mean_BxD) * jnp.exp(-log_sigma)
    return jnp.sum(0.5 * z**2 + log_sigma + 0.5 * jnp.log(2 * jnp.pi), axis=-1)
  raise ValueError(f"likelihood {likelihood!r}: expected one of {', '.join(LIKELIHOODS)}")


def kl_per_dim(mu_BxL, logvar_BxL):
  """KL(N(mu, exp(logvar)) || N(0, 1)) per example and latent dimension (B x L)."""
  return -0.5 * (1.0 + logvar_BxL - jnp.square(mu_BxL) - jnp.exp(logvar_BxL))


def free_bits_kl(mu_BxL, logvar_BxL, free_bits: float):
  """Batch KL with free bits (Kingma et al., 2016): B * sum_l max(lambda, mean_b KL_bl).

  Below lambda nats a latent dimension's KL costs nothing, so it is not pushed to collapse.
  """
  kl_mean_L = jnp.mean(kl_per_dim(mu_BxL, logvar_BxL), axis=0)
  return mu_BxL.shape[0] * jnp.sum(jnp.maximum(kl_mean_L, free_bits))


def gaussian_log_density(
  z: jax.Array, mu: jax.Array | float, logvar: jax.Array | float
) -> jax.Array:
  """log N(z; mu, exp(logvar)) summed over the last (latent) axis: nats, leading axes kept
  (mu = logvar = 0: the standard normal prior log p(z))."""
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + jnp.square(z - mu) * jnp.exp(-logvar), -1)


def iwae_bound(log_p_x_given_z_KxB, z_KxBxL, mu_BxL, logvar_BxL):
  """Per example: logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K (nats).

  K = 1 is the ELBO; the bound tightens towards log p(x) as K grows (Burda et al., 2015).
  """
  log_w_KxB = (
    log_p_x_given_z_KxB
    + gaussian_log_density(z_KxBxL, 0.0, 0.0)
    - gaussian_log_density(z_KxBxL, mu_BxL, logvar_BxL)
  )
  return jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(log_w_KxB.shape[0])
