"""The compiled pieces of training, written for one model and run for K by ``over_models``.

Randomness: the noise of step s is ``fold_in(rng_noise, s)`` (s = the global step held in
the train state), the shuffle of epoch e is ``fold_in(rng_shuffle, e)``: neither depends on
how the epoch is cut into compiled chunks. Units: every metric is a sum over examples
(nats); reported losses divide by the number of examples, as the reference prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

TrainState = train_state.TrainState


def model_of(state: TrainState) -> Any:
  """The VAE module of a train state: the module whose bound ``apply`` its apply_fn is, found
  through wrappers (functools.partial's ``func``, functools.wraps' ``__wrapped__``). Objectives
  need none of this: they reach the model through ``apply_fn(..., method=...)``."""
  fn: Any = state.apply_fn
  while not isinstance(getattr(fn, "__self__", None), nn.Module):
    fn = getattr(fn, "func", None) or getattr(fn, "__wrapped__", None)
    if fn is None:
      raise TypeError(f"apply_fn {state.apply_fn!r} is not a (wrapped) flax Module's apply")
  return fn.__self__


def over_models(fn: Callable, num_models: int, strategy: str) -> Callable:
  """fn(per_model, shared) run for K models whose per_model leaves have a leading K axis.

  K = 1 calls fn on model 0 itself (the single-run program, unchanged); 'vmap' batches the
  models; 'map' runs them one after another inside one program (lax.map).
  """
  if num_models == 1:

    def run(per_model, shared):
      out = fn(jax.tree.map(lambda a: a[0], per_model), shared)
      return jax.tree.map(lambda a: a[None], out)
  elif strategy == "vmap":

    def run(per_model, shared):
      return jax.vmap(fn, in_axes=(0, None))(per_model, shared)
  else:

    def run(per_model, shared):
      return jax.lax.map(lambda one: fn(one, shared), per_model)

  return run


# The stream of a step's data draws (dynamic binarization, M1's z1): apart from the objective's
# key fold_in(rng_noise, step), so no subkey an objective derives from its key repeats them.
DATA_STREAM = 2**32 - 2  # No step has this number (steps < 2**31).


def data_key(rng_noise, step):
  """The key of step's data draws: fold_in(fold_in(rng_noise, DATA_STREAM), step)."""
  return jax.random.fold_in(jax.random.fold_in(rng_noise, DATA_STREAM), step)


def to_float(x_u8, key=None):
  """uint8 pixels -> float32 in [0, 1], as ToTensor does (x / 255, no binarization).

  Float data are a run's posterior (data source 'encoded'): channels mean and log-variance
  (... x 2) -> ... x 1: the mean, or with a key (a training step's) a draw z = mean +
  sigma * normal(fold_in(key, 3)), as Kingma et al.'s M1+M2 draws M1's z1 at every step."""
  if not jnp.issubdtype(x_u8.dtype, jnp.floating):
    return x_u8.astype(jnp.float32) / 255.0
  mean, logvar = x_u8[..., :1].astype(jnp.float32), x_u8[..., 1:].astype(jnp.float32)
  if key is None:
    return mean
  eps = jax.random.normal(jax.random.fold_in(key, 3), mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def model_shape(data_shape: tuple[int, ...], dtype) -> tuple[int, ...]:
  """A model's image shape for data of this shape (N excluded) and dtype: float data (an
  encoded posterior) lose their log-variance channel."""
  return (*data_shape[:-1], 1) if np.issubdtype(dtype, np.floating) else tuple(data_shape)


def shard_batch(x_BxHxWxC, mesh: Mesh | None):
  """Splits a batch over the mesh's data axis when the axis divides it; otherwise as is.

  Parameters stay replicated, so XLA all-reduces the gradients. A batch the axis does not
  divide (only the epoch's last partial batch can be one) is computed whole on every device.
  """
  if mesh is None or x_BxHxWxC.shape[0] % mesh.size:
    return x_BxHxWxC
  return jax.lax.with_sharding_constraint(x_BxHxWxC, NamedSharding(mesh, P("data")))


def train_step(
  state: TrainState,
  batch,
  rng_noise,
  hparams,
  *,
  objective_fn: Callable,
  binarize: bool = False,
  mesh: Mesh | None = None,
):
  """One Adam step on the objective's batch-summed loss; returns (state, metrics sums).

  batch: x_u8_BxHxWxC, or (x_u8_BxHxWxC, labels_B) for a run that uses labels (then
  ``objective_fn(..., labels)``: objectives.with_labels). ``binarize`` replaces the inputs by
  a fresh Bernoulli(pixel / 255) draw (dynamic binarization). Keys: the objective's is
  fold_in(rng_noise, step), its alone; the data's draws come from data_key(rng_noise, step)
  (binarization fold_in(., 1), an encoded posterior's draw fold_in(., 3): to_float). Metrics
  add ``examples``.
  """
  x_u8_BxHxWxC, labels = batch if isinstance(batch, tuple) else (batch, None)
  key = jax.random.fold_in(rng_noise, state.step)
  draws = data_key(rng_noise, state.step)
  x = to_float(shard_batch(x_u8_BxHxWxC, mesh), draws)
  if binarize:
    x = jax.random.bernoulli(jax.random.fold_in(draws, 1), x).astype(x.dtype)
  args = (state.params, state.apply_fn, x, key, hparams.at_step(state.step))
  grads, metrics = jax.grad(objective_fn, has_aux=True)(
    *args, *(() if labels is None else (labels,))
  )
  metrics["examples"] = jnp.int32(x_u8_BxHxWxC.shape[0])
  return state.apply_gradients(grads=grads), metrics


def split_batches(idx_N, batch_size: int):
  """(full batches idx_SxB, remainder idx_R): the last partial batch is kept, as PyTorch does."""
  num_full = idx_N.shape[0] // batch_size
  return idx_N[: num_full * batch_size].reshape(num_full, batch_size), idx_N[
    num_full * batch_size :
  ]


# fold_in(shuffle key, LABEL_DRAW) draws the training labels a run keeps (no epoch has this number).
LABEL_DRAW = 2**32 - 1


def labelled_mask(key, labels_N, per_class: int, num_classes: int):
  """mask_N: exactly per_class examples of each class, a uniform draw without replacement.

  Examples are sorted by (class, uniform(key)) and the first per_class of each class kept;
  every class must have that many (vae_jax.group checks it before a run starts).
  """
  num = labels_N.shape[0]
  order_N = jnp.lexsort((jax.random.uniform(key, (num,)), labels_N))
  counts_C = jnp.bincount(labels_N, length=num_classes)
  starts_C = jnp.cumsum(counts_C) - counts_C
  rank_N = jnp.arange(num) - starts_C[labels_N[order_N]]
  return jnp.zeros(num, bool).at[order_N].set(rank_N < per_class)


def kept_labels(keys, labels_N, per_class: int, num_classes: int):
  """The training labels a run sees: all (per_class 0), else -1 but for its draw."""
  if not per_class:
    return labels_N
  mask_N = labelled_mask(
    jax.random.fold_in(keys["shuffle"], LABEL_DRAW), labels_N, per_class, num_classes
  )
  return jnp.where(mask_N, labels_N, -1)


def epoch_order(
  keys,
  epoch,
  *,
  num_examples: int,
  batch_size: int,
  labels_N=None,
  per_class: int = 0,
  num_classes: int = 0,
):
  """(idx_SxB, idx_R): the epoch's shuffled full batches and its last partial batch; with
  labels_N, ((idx_SxB, y_SxB), (idx_R, y_R)), y the labels the run keeps (kept_labels)."""
  full, rest = split_batches(
    jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_examples), batch_size
  )
  if labels_N is None:
    return full, rest
  y_N = kept_labels(keys, labels_N, per_class, num_classes)
  return (full, y_N[full]), (rest, y_N[rest])


def gather(data, order_B):
  """The batch of an epoch order's row: images, or (images, labels) for a labelled order."""
  if isinstance(order_B, tuple):
    return data[order_B[0]], order_B[1]
  return data[order_B]


def run_steps(per_model, data, *, step_fn: Callable):
  """Steps over the batches idx_CxB of one model: (state, (metrics_C, step_C))."""
  state, keys, hparams, idx_CxB = per_model

  def step(state, idx_B):
    state, metrics = step_fn(state, gather(data, idx_B), keys["noise"], hparams)
    return state, (metrics, state.step)

  return jax.lax.scan(step, state, idx_CxB)


def last_step(per_model, data, *, step_fn: Callable):
  """The epoch's last partial batch: (state, (metrics, step))."""
  state, keys, hparams, idx_R = per_model
  state, metrics = step_fn(state, gather(data, idx_R), keys["noise"], hparams)
  return state, (metrics, state.step)


def epoch_sums(per_model, _):
  """The epoch's metric sums from its chunks' per-step metrics and the partial batch's.

  first_nonfinite_step: the global step whose loss was first NaN or Inf (-1: none).
  """
  chunks, rest = per_model
  # One buffer of every step's metrics before the sums (the barrier keeps XLA from fusing the
  # concatenation into the reduction): the sums then do not depend on the chunking.
  metrics_S, step_S = jax.lax.optimization_barrier(
    (
      jax.tree.map(lambda *c: jnp.concatenate(c), *[m for m, _ in chunks]),
      jnp.concatenate([s for _, s in chunks]),
    )
  )
  sums = jax.tree.map(jnp.sum, metrics_S)
  bad_S = ~jnp.isfinite(metrics_S["loss"])
  bad_step = jnp.where(bad_S.any(), step_S[jnp.argmax(bad_S)], -1)
  if rest is not None:
    metrics, rest_step = rest
    sums = jax.tree.map(jnp.add, sums, metrics)
    bad_step = jnp.where(
      bad_step >= 0, bad_step, jnp.where(jnp.isfinite(metrics["loss"]), -1, rest_step)
    )
  return {**sums, "first_nonfinite_step": bad_step}


def evaluate(
  params,
  apply_fn: Callable,
  images_u8,
  key,
  *,
  batch_size: int,
  objective_fn: Callable,
  hparams,
  mesh: Mesh | None = None,
) -> dict[str, Any]:
  """Test-set sums of the objective's metrics with a sampled z, and at z = mu (``<key>_mean_z``).

  images_u8: the images, or (images, labels) for a run that uses labels. Batch i draws its
  noise from fold_in(key, i).
  """
  images_u8, labels_N = images_u8 if isinstance(images_u8, tuple) else (images_u8, None)
  full_SxB, rest_R = split_batches(jnp.arange(images_u8.shape[0]), batch_size)

  def batch_sums(i, idx_B):
    x = to_float(shard_batch(images_u8[idx_B], mesh))
    labels = () if labels_N is None else (labels_N[idx_B],)
    _, sampled = objective_fn(params, apply_fn, x, jax.random.fold_in(key, i), hparams, *labels)
    _, mean_z = objective_fn(params, apply_fn, x, None, hparams, *labels)
    return {**sampled, **{f"{k}_mean_z": v for k, v in mean_z.items()}}

  def body(total, i_idx):
    return jax.tree.map(jnp.add, total, batch_sums(*i_idx)), None

  shapes = jax.eval_shape(batch_sums, 0, full_SxB[0] if full_SxB.shape[0] else rest_R)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(full_SxB.shape[0]), full_SxB))
  if rest_R.shape[0]:
    total = jax.tree.map(jnp.add, total, batch_sums(full_SxB.shape[0], rest_R))
  return total


def epoch_images(
  params,
  apply_fn: Callable,
  x_u8_8xHxWxC,
  key,
  latent_dim: int,
  num_samples: int = 64,
  num_classes: int = 0,
):
  """(originals over reconstructions 16xHxWxC, samples num_samples x HxWxC), pixels in [0, 1].

  As the reference: reconstructions use a sampled z; samples decode z ~ p(z) (the model's
  prior; N(0, I) draws normal(key, (num_samples, L)) as the reference). A
  conditional model (num_classes > 0) takes (images, labels) and reconstructs with the
  images' labels; sample i has class i mod num_classes.
  """
  x_u8_8xHxWxC, labels_8 = x_u8_8xHxWxC if num_classes else (x_u8_8xHxWxC, None)
  given, drawn = (
    ({}, {})
    if not num_classes
    else ({"labels": labels_8}, {"labels": jnp.arange(num_samples, dtype=jnp.int32) % num_classes})
  )
  key_recon, key_sample = jax.random.split(key)
  x = to_float(x_u8_8xHxWxC)
  logits, _, _ = apply_fn({"params": params}, x, key_recon, **given)
  z_SxL = apply_fn({"params": params}, key_sample, num_samples, method="sample_prior")
  samples = apply_fn({"params": params}, z_SxL, method="generate", **drawn)
  recon = apply_fn({"params": params}, logits, method="mean_image")
  return jnp.concatenate([x, recon]), samples
