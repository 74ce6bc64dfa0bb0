"""Evaluation researchers report: importance-weighted log-likelihood and latent diagnostics.

The standard protocol (Burda et al., 2015): train on dynamically binarized MNIST
(``config.data.binarize=True``), evaluate on the test set binarized once with a fixed key
(``binarize(x, jax.random.key(BINARIZE_SEED))``), estimate

  log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x),

with K = 5000, and report nats per example (test NLL = minus its mean). The K-sample mean of
the same log-weights is the ELBO; their difference, the gap, is how much the bound gains.
A Bernoulli decoder gives a likelihood only for binary inputs: continuous pixels are refused.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint, config as config_lib, data, losses, objectives, parallel
from vae_jax.runs import open_run  # Restoring needs the checkpoint code, not the training loop.
from vae_jax.step import model_of, to_float

BINARIZE_SEED = 0  # The test set's one binarization (standard protocol: fixed, shared by all runs).
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2015): unit l is active if Cov_x(E_q[z_l]) > 0.01.


def binarize(x_u8_NxD, key: jax.Array) -> np.ndarray:
  """A Bernoulli(pixel / 255) draw of every pixel: float32 0/1 (stochastic binarization)."""
  probs = to_float(jnp.asarray(x_u8_NxD))
  return np.asarray(jax.random.bernoulli(key, probs).astype(jnp.float32))


def check_binary(x_NxD: np.ndarray, what: str = "inputs") -> None:
  """Refuses inputs that are not all 0 or 1: a Bernoulli decoder's 'likelihood' of gray
  levels is not a likelihood, and such numbers are not comparable with published NLLs."""
  x = np.asarray(x_NxD)
  bad = ~((x == 0) | (x == 1))
  if bad.any():
    raise ValueError(
      f"{what}: {int(bad.sum())} of {x.size} values are not 0 or 1 (e.g. {x[bad][0]:.4g}); "
      "the importance-weighted log-likelihood of a Bernoulli decoder is a likelihood only "
      "for binary data: binarize them first (vae_jax.evaluate.binarize, the standard "
      "protocol) or use a continuous likelihood"
    )


@functools.partial(
  jax.jit, static_argnames=("apply_fn", "num_samples", "sample_chunk", "likelihood")
)
def _log_weight_stats(
  params,
  apply_fn: Callable,
  x_BxD,
  index_B,
  key,
  labels_B=None,
  *,
  num_samples: int,
  sample_chunk: int,
  likelihood: objectives.Likelihood,
):
  """Per example: (logsumexp_k log w_k, sum_k log w_k, sum_k [log q(z_k|x) - log p(z_k)])
  over num_samples draws of z.

  The weights come from the model's ``importance_terms`` (every stochastic layer of a
  hierarchical model; any prior and posterior family). Sample k of example i is drawn from
  fold_in(fold_in(key, i), k) (i = its index in the whole set), so the result does not
  depend on how examples or samples are chunked. Samples are taken sample_chunk at a time
  with a running logsumexp: memory ~ sample_chunk x B x D floats of logits. labels_B: a
  conditional model's labels (log p(x|y)).
  """
  num_chunks = -(-num_samples // sample_chunk)
  nll = objectives.nll_fn(params, likelihood, batch_ndim=2)

  def one(x_D, key, label, k):
    """(log w, log q - log p) of draw k of one example."""
    given = {} if labels_B is None else {"labels": label[None]}
    logits, log_p_1x1, log_q_1x1 = apply_fn(
      {"params": params}, x_D[None], key, 1, method="importance_terms", **given
    )
    log_w = -nll(logits, x_D[None, None]) + log_p_1x1 - log_q_1x1
    return log_w[0, 0], (log_q_1x1 - log_p_1x1)[0, 0]

  keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)
  labels = jnp.zeros_like(index_B) if labels_B is None else labels_B

  def body(carry, k_S):
    max_B, sumexp_B, total_B, kl_B = carry
    draws = jax.vmap(lambda k: jax.vmap(one, (0, 0, 0, None))(x_BxD, keys_k(keys_B, k), labels, k))
    log_w_SxB, kl_SxB = draws(k_S)
    valid_S = k_S < num_samples
    log_w_SxB = jnp.where(valid_S[:, None], log_w_SxB, -jnp.inf)
    new_max_B = jnp.maximum(max_B, jnp.max(log_w_SxB, axis=0))
    sumexp_B = sumexp_B * jnp.exp(max_B - new_max_B) + jnp.sum(jnp.exp(log_w_SxB - new_max_B), 0)
    total_B = total_B + jnp.sum(jnp.where(valid_S[:, None], log_w_SxB, 0.0), axis=0)
    kl_B = kl_B + jnp.sum(jnp.where(valid_S[:, None], kl_SxB, 0.0), axis=0)
    return (new_max_B, sumexp_B, total_B, kl_B), None

  batch = x_BxD.shape[0]
  init = (jnp.full((batch,), -jnp.inf), *(jnp.zeros((batch,)) for _ in range(3)))
  k_CxS = jnp.arange(num_chunks * sample_chunk).reshape(num_chunks, sample_chunk)
  (max_B, sumexp_B, total_B, kl_B), _ = jax.lax.scan(body, init, k_CxS)
  return max_B + jnp.log(sumexp_B), total_B, kl_B


def keys_k(keys_B, k):
  """Each example's key for its sample k: fold_in(key_b, k)."""
  return jax.vmap(lambda key: jax.random.fold_in(key, k))(keys_B)


def iwae_log_likelihood(
  params,
  apply_fn: Callable,
  x_NxD,
  key: jax.Array,
  num_samples: int,
  *,
  batch_size: int = 16,
  sample_chunk: int = 500,
  likelihood: objectives.Likelihood = objectives.Likelihood(),
  labels_N=None,
) -> dict[str, np.ndarray]:
  """Per-example estimates (nats) with num_samples importance samples from q(z|x) (of a
  conditional model: of log p(x|y) with q(z|x, y), labels_N the images' classes).

  Returns {'iwae': log p(x) estimate (the K-sample bound, exact as K -> inf), 'elbo': the
  mean of the same K log-weights (an estimate of the ELBO), 'kl': the mean of their
  log q(z|x) - log p(z) (the KL's estimate, whatever the prior and posterior)}, each (N,). Computed
  batch_size examples and sample_chunk samples at a time (bounded memory); the result is
  the same for any chunking (up to float rounding) and deterministic given key.
  """
  if not 1 <= num_samples < 2**31:
    raise ValueError(
      f"num_samples={num_samples}: expected >= 1 and < 2**31 (a sample's index is folded "
      "into its key)"
    )
  x_NxD = np.asarray(x_NxD, np.float32)
  if likelihood.likelihood == "bernoulli":
    check_binary(x_NxD)
  likelihood = objectives.Likelihood(likelihood.likelihood, likelihood.gaussian_sigma)
  n = len(x_NxD)
  batch_size = min(batch_size, n)
  sample_chunk = min(sample_chunk, num_samples)
  labels_N = None if labels_N is None else np.asarray(labels_N, np.int32)
  pixels = int(np.prod(x_NxD.shape[1:]))  # One chunk's logits and weights.
  parallel.check_fits(
    4 * batch_size * 3 * sample_chunk * pixels,
    f"--sample_chunk {sample_chunk} (a chunk's logits)",
  )
  pad = -n % batch_size  # The last batch is padded so one compiled function serves every batch.
  x_pad = np.concatenate([x_NxD, np.zeros((pad, *x_NxD.shape[1:]), np.float32)])
  y_pad = None if labels_N is None else np.concatenate([labels_N, np.zeros(pad, np.int32)])
  logsumexp, total, kl = [], [], []
  for start in range(0, n + pad, batch_size):
    lse_B, total_B, kl_B = _log_weight_stats(
      params,
      apply_fn,
      x_pad[start : start + batch_size],
      jnp.arange(start, start + batch_size),
      key,
      None if y_pad is None else y_pad[start : start + batch_size],
      num_samples=num_samples,
      sample_chunk=sample_chunk,
      likelihood=likelihood,
    )
    logsumexp.append(lse_B)
    total.append(total_B)
    kl.append(kl_B)
  logsumexp_N, total_N, kl_N = (
    np.concatenate(jax.device_get(a))[:n].astype(np.float64) for a in (logsumexp, total, kl)
  )
  return {
    "iwae": logsumexp_N - np.log(num_samples),
    "elbo": total_N / num_samples,
    "kl": kl_N / num_samples,
  }


@functools.partial(jax.jit, static_argnames=("apply_fn", "method"))
def _apply(params, apply_fn, a_BxD, labels_B, method: str):
  given = {} if labels_B is None else {"labels": labels_B}
  return apply_fn({"params": params}, a_BxD, method=method, **given)


def apply_all(params, apply_fn: Callable, a_NxD, method: str, labels_N=None, chunk: int = 2000):
  """A model method on every example, chunk examples per call (labels_N: a conditional
  model's classes, or class probabilities), as numpy."""
  a_NxD = np.asarray(a_NxD, np.float32)
  labels_N = None if labels_N is None else np.asarray(labels_N)
  outs = [
    _apply(
      params,
      apply_fn,
      a_NxD[i : i + chunk],
      None if labels_N is None else labels_N[i : i + chunk],
      method,
    )
    for i in range(0, len(a_NxD), chunk)
  ]
  return jax.tree.map(lambda *a: np.concatenate(a), *jax.device_get(outs))


def encode_all(
  params, apply_fn: Callable, x_NxD, chunk: int = 2000, labels_N=None
) -> tuple[np.ndarray, np.ndarray]:
  """(mu_NxL, logvar_NxL) of every example, chunk examples per call (labels_N: of a
  conditional model, q(z|x, y))."""
  return tuple(apply_all(params, apply_fn, x_NxD, "encode", labels_N, chunk))


def decode_all(params, apply_fn: Callable, z_NxL, chunk: int = 2000, labels_N=None) -> np.ndarray:
  """Mean images sigmoid(decoder(z)) in [0, 1] of every code (N x H x W x C), chunk codes per
  call (labels_N: of a conditional model, p(x|y, z))."""
  return apply_all(params, apply_fn, z_NxL, "generate", labels_N, chunk)


def latent_diagnostics(
  mu_NxL: np.ndarray, logvar_NxL: np.ndarray | None, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> dict[str, Any]:
  """KL per latent dimension and active units (Burda et al., 2015) from a set's posteriors.

  kl_per_dim: mean over examples of KL(q(z_l|x) || N(0, 1)), nats (sums to the mean KL),
  for the diagonal Gaussian posterior and N(0, I) prior (logvar_NxL given); None for other
  latents, whose KL does not split by unit (mu_NxL is then the posterior's code,
  VAE.posterior_point). activity: Cov_x(E_q[z_l]) = the variance over examples of mu_l; a
  unit is active when it exceeds threshold. Returns kl_per_dim, activity (L,), active (L
  bool), active_units.
  """
  mu = np.asarray(mu_NxL, np.float64)
  kl_per_dim = None
  if logvar_NxL is not None:
    logvar = np.asarray(logvar_NxL, np.float64)
    kl_per_dim = np.mean(-0.5 * (1.0 + logvar - mu**2 - np.exp(logvar)), axis=0)
  activity = np.var(mu, axis=0)
  active = activity > threshold
  return {
    "kl_per_dim": kl_per_dim,
    "activity": activity,
    "active": active,
    "active_units": int(active.sum()),
    "latent_dim": mu.shape[1],
  }


def collapse_warning(diagnostics: dict[str, Any]) -> str | None:
  """A sentence when latent units are inactive (posterior collapse), else None."""
  inactive = np.flatnonzero(~diagnostics["active"])
  latent_dim = diagnostics["latent_dim"]
  if not len(inactive):
    return None
  kl_per_dim = diagnostics["kl_per_dim"]
  which = (
    "all latent units"
    if len(inactive) == latent_dim
    else (f"{len(inactive)} of {latent_dim} latent units (dims {', '.join(map(str, inactive))})")
  )
  return (
    f"posterior collapse: {which} inactive (Cov_x(E_q[z]) <= {ACTIVE_UNIT_THRESHOLD})"
    + (
      f", carrying {kl_per_dim[inactive].sum():.3f} nats of KL in total"
      if kl_per_dim is not None
      else ""
    )
    + "; the decoder ignores them"
  )


def posterior_codes(run, x_NxD, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
  """(codes_NxL, logvar_NxL or None) for latent_diagnostics: encode's (mu, logvar) when the
  run's KL is the closed-form Gaussian one, else the posterior's codes and None."""
  state = run.state
  if config_lib.analytic_kl(run.settings):
    return encode_all(state.params, state.apply_fn, x_NxD, labels_N=labels)
  return apply_all(state.params, state.apply_fn, x_NxD, "posterior_point", labels), None


def evaluate_run(
  workdir: str | Path,
  which: str = "latest",
  num_samples: int = 5000,
  seed: int = 0,
  num_examples: int = 0,
  sample_chunk: int = 500,
) -> dict[str, Any]:
  """Test NLL of a trained run under the standard protocol, with diagnostics (one JSON dict).

  The test set is binarized with key(BINARIZE_SEED); the importance samples use key(seed).
  num_examples: 0 = the whole test set, N = its first N. A run trained on continuous pixels
  (config.binarize=False) is evaluated all the same, with a warning: its number is not the
  protocol's.
  """
  run = open_run(workdir, which)
  state, meta, settings = run.state, run.meta, run.settings
  objective, objective_settings = settings.objective
  if objective.name == "ae":
    raise ValueError(
      f"workdir {workdir}: objective 'ae': a deterministic autoencoder has no "
      "q(z|x) or p(z), so no importance-weighted likelihood"
    )
  likelihood = objective_settings.get("likelihood", "bernoulli")
  if likelihood not in losses.DISCRETE:
    raise ValueError(
      f"workdir {workdir}: likelihood {likelihood!r}; the test NLL needs a discrete "
      "likelihood: the Bernoulli decoder of binarized MNIST, or the discretized logistic "
      "of 8-bit pixels"
    )
  x_u8, all_labels = data.load_data(settings.data)["test"]
  x_u8 = x_u8[: num_examples or None]
  # A conditional model's likelihood is log p(x|y), for the test images' labels.
  labels = all_labels[: len(x_u8)] if model_of(state).conditional else None
  x_NxD = (
    binarize(x_u8, jax.random.key(BINARIZE_SEED))
    if likelihood == "bernoulli"
    else np.asarray(x_u8, np.float32) / np.float32(255)  # The 256 levels themselves.
  )
  with jax.default_matmul_precision(settings.run.matmul_precision):  # As the run trained.
    estimates = iwae_log_likelihood(
      state.params,
      state.apply_fn,
      x_NxD,
      jax.random.key(seed),
      num_samples,
      sample_chunk=sample_chunk,
      likelihood=objectives.Likelihood(likelihood),
      labels_N=labels,
    )
    diagnostics = latent_diagnostics(*posterior_codes(run, x_NxD, labels))
  notes = [w for w in [collapse_warning(diagnostics)] if w]
  if likelihood == "bernoulli" and not settings.data.binarize:
    notes.append(
      "trained on continuous pixels (config.data.binarize=False): the standard protocol "
      "trains on dynamically binarized data, so this NLL is not comparable with "
      "published figures"
    )
  for note in notes:
    warnings.warn(note, stacklevel=2)
  nll, elbo = -estimates["iwae"].mean(), -estimates["elbo"].mean()
  return {
    "checkpoint": str(Path(workdir) / checkpoint.SUBDIR / str(meta["epoch"])),
    "epoch": meta["epoch"],
    "examples": len(x_NxD),
    "num_samples": num_samples,
    "test_nll": float(nll),
    "test_neg_elbo": float(elbo),
    "gap": float(elbo - nll),
    "test_bits_per_dim": float(nll / (np.prod(x_NxD.shape[1:]) * np.log(2))),
    "active_units": diagnostics["active_units"],
    "latent_dim": diagnostics["latent_dim"],
    "active_units_per_layer": [
      int(a.sum())
      for a in np.split(diagnostics["active"], np.cumsum(model_of(state).latent_layers)[:-1])
    ],
    "test_kl": float(estimates["kl"].mean()),
    "kl_per_dim": (
      None
      if diagnostics["kl_per_dim"] is None
      else [round(float(v), 4) for v in diagnostics["kl_per_dim"]]
    ),
    "warnings": notes,
  }
