"""The compiled pieces of training, written for one model and run for K by ``over_models``.

Randomness: the noise of step s is ``fold_in(rng_noise, s)`` (s = the global step held in
the train state), the shuffle of epoch e is ``fold_in(rng_shuffle, e)``: neither depends on
how the epoch is cut into compiled chunks. Units: every metric is a sum over examples
(nats); reported losses divide by the number of examples, as the reference prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

TrainState = train_state.TrainState


def model_of(state: TrainState) -> Any:
  """The VAE module of a train state (its apply_fn is the module's bound ``apply``)."""
  return state.apply_fn.__self__  # type: ignore[attr-defined]


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


def to_float(x_u8):
  """uint8 pixels -> float32 in [0, 1], as ToTensor does (x / 255, no binarization)."""
  return x_u8.astype(jnp.float32) / 255.0


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
  x_u8_BxHxWxC,
  rng_noise,
  hparams,
  *,
  objective_fn: Callable,
  binarize: bool = False,
  mesh: Mesh | None = None,
):
  """One Adam step on the objective's batch-summed loss; returns (state, metrics sums).

  ``binarize`` replaces the inputs by a fresh Bernoulli(pixel / 255) draw (dynamic
  binarization; key fold_in(step key, 1)). Metrics add ``examples``.
  """
  key = jax.random.fold_in(rng_noise, state.step)
  x = to_float(shard_batch(x_u8_BxHxWxC, mesh))
  if binarize:
    x = jax.random.bernoulli(jax.random.fold_in(key, 1), x).astype(x.dtype)
  grads, metrics = jax.grad(objective_fn, has_aux=True)(
    state.params, state.apply_fn, x, key, hparams.at_step(state.step)
  )
  metrics["examples"] = jnp.int32(x_u8_BxHxWxC.shape[0])
  return state.apply_gradients(grads=grads), metrics


def split_batches(idx_N, batch_size: int):
  """(full batches idx_SxB, remainder idx_R): the last partial batch is kept, as PyTorch does."""
  num_full = idx_N.shape[0] // batch_size
  return idx_N[: num_full * batch_size].reshape(num_full, batch_size), idx_N[
    num_full * batch_size :
  ]


def epoch_order(keys, epoch, *, num_examples: int, batch_size: int):
  """(idx_SxB, idx_R): the epoch's shuffled full batches and its last partial batch."""
  return split_batches(
    jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_examples), batch_size
  )


def run_steps(per_model, data, *, step_fn: Callable):
  """Steps over the batches idx_CxB of one model: (state, (metrics_C, step_C))."""
  state, keys, hparams, idx_CxB = per_model

  def step(state, idx_B):
    state, metrics = step_fn(state, data[idx_B], keys["noise"], hparams)
    return state, (metrics, state.step)

  return jax.lax.scan(step, state, idx_CxB)


def last_step(per_model, data, *, step_fn: Callable):
  """The epoch's last partial batch: (state, (metrics, step))."""
  state, keys, hparams, idx_R = per_model
  state, metrics = step_fn(state, data[idx_R], keys["noise"], hparams)
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

  Batch i draws its noise from fold_in(key, i).
  """
  full_SxB, rest_R = split_batches(jnp.arange(images_u8.shape[0]), batch_size)

  def batch_sums(i, idx_B):
    x = to_float(shard_batch(images_u8[idx_B], mesh))
    _, sampled = objective_fn(params, apply_fn, x, jax.random.fold_in(key, i), hparams)
    _, mean_z = objective_fn(params, apply_fn, x, None, hparams)
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
  params, apply_fn: Callable, x_u8_8xHxWxC, key, latent_dim: int, num_samples: int = 64
):
  """(originals over reconstructions 16xHxWxC, samples num_samples x HxWxC), pixels in [0, 1].

  As the reference: reconstructions use a sampled z; samples decode z ~ N(0, I).
  """
  key_recon, key_sample = jax.random.split(key)
  x = to_float(x_u8_8xHxWxC)
  logits, _, _ = apply_fn({"params": params}, x, key_recon)
  z_SxL = jax.random.normal(key_sample, (num_samples, latent_dim))
  samples = apply_fn({"params": params}, z_SxL, method="generate")
  return jnp.concatenate([x, jax.nn.sigmoid(logits)]), samples
