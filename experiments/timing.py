"""Timing of the training paths, one function each: what experiments/benchmark.py runs in a
fresh process per path, and profile_epoch.py reuses (the compiled epoch, matmul peak)."""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.clock import best_seconds
from vae_jax import (
  config as config_lib,
  data,
  group as group_lib,
  objectives,
  parallel,
  step as step_lib,
  training,
)
from vae_jax.configs import default
from vae_jax.epoch import Programs


def epoch_matmul_flops(config, num_examples: int, input_dim: int = 784) -> float:
  """Matmul FLOPs of one training epoch of the mlp (2 per multiply-add)."""
  model = config_lib.parse(config).model[1]  # The settings of the chosen model, defaults filled.
  hidden, latent = model["hidden_dim"], model["latent_dim"]
  layers = [
    (input_dim, hidden),
    (hidden, latent),
    (hidden, latent),
    (latent, hidden),
    (hidden, input_dim),
  ]
  macs = 0
  for i, (fan_in, fan_out) in enumerate(layers):
    passes = 2 if i == 0 else 3  # forward, weight grad, input grad (not for the data)
    macs += passes * fan_in * fan_out
  return 2.0 * macs * num_examples


def matmul_tflops(
  n: int, dtype=jnp.float32, precision: str = "highest", chain: int = 10, repeats: int = 3
) -> float:
  """Best TFLOP/s of ``chain`` dependent n x n products in one program (one sync per
  program, not per product, so an accelerator's launch and sync cost is amortized)."""
  a = (jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

  @jax.jit
  def products(a):
    return jax.lax.fori_loop(0, chain, lambda _, c: jnp.dot(c, a, precision=precision), a)

  return 2 * n**3 * chain / best_seconds(lambda: products(a).block_until_ready(), repeats) / 1e12


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> dict[str, float]:
  """Best float32 GFLOP/s of an n x n matmul through XLA and through numpy's BLAS."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  xla = 2 * n**3 / best_seconds(lambda: matmul(a).block_until_ready(), repeats) / 1e9
  a_np = np.asarray(a)
  blas = 2 * n**3 / best_seconds(lambda: a_np @ a_np, repeats) / 1e9
  return {"xla": xla, "numpy": blas}


def reference_programs(config, num_devices: int = 1, chunks: int = 1):
  """(programs, states, keys, compile seconds): the config's compiled epoch, in ``chunks``
  chunks, of one model, with the config's data on the device(s)."""
  splits = data.load_data(config)
  group = group_lib.make_group(config, splits)
  mesh = parallel.make_mesh(num_devices)
  states, keys = parallel.replicate(group_lib.create_states(group), mesh)
  x_train, x_test = parallel.replicate((splits["train"][0], splits["test"][0]), mesh)
  t0 = time.perf_counter()
  programs = Programs(group, states, keys, x_train, x_test, mesh, chunks=chunks)
  return programs, states, keys, time.perf_counter() - t0


def time_epochs(
  programs, states, keys, num_epochs: int, progress: bool = False
) -> tuple[list[float], list[float]]:
  """(seconds, train loss) of each epoch; reading the loss waits for the epoch. progress:
  each chunk's step is read as the train command's bar reads it."""
  seconds, losses = [], []
  on_chunk = (lambda step: None) if progress else None
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    states, sums = programs.train_epoch(states, keys, epoch, on_chunk)
    losses.append(float(sums["loss"][0]) / int(sums["examples"][0]))
    seconds.append(time.perf_counter() - t0)
  return seconds, losses


def time_scan(config, num_epochs: int, num_devices: int = 1) -> dict:
  """The compiled epoch: seconds per epoch, compile seconds."""
  programs, states, keys, compile_seconds = reference_programs(config, num_devices)
  seconds, losses = time_epochs(programs, states, keys, num_epochs)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds, "train_loss": losses}


def time_train_command(config, num_epochs: int) -> dict:
  """The default `train` command as a user runs it: progress bar (chunked epoch), evaluation,
  checkpoints, images and TensorBoard every epoch. epoch_seconds: its recorded train
  seconds; wall_seconds: each epoch with everything around it."""
  config.optim.num_epochs = num_epochs
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    _, records = training.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
  compile_seconds = records[0]["compile_seconds"]
  return {
    "epoch_seconds": [r["train_seconds"] for r in records],
    "compile_seconds": compile_seconds,
    "train_loss": [r["train_loss"] for r in records],
    "wall_seconds_per_epoch": (wall - compile_seconds) / num_epochs,
  }


def time_loop(config, num_epochs: int) -> dict:
  """A Python loop of jitted steps over the same batches (permutation drawn on the device)."""
  programs, states, keys, _ = reference_programs(config)
  state, keys = group_lib.unstack(states), group_lib.unstack(keys)
  x_u8, hparams = programs.train_data, group_lib.unstack(programs.hparams)
  n, batch = x_u8.shape[0], config.optim.batch_size

  @jax.jit
  def order(epoch):
    return step_lib.epoch_order(keys, epoch, num_examples=n, batch_size=batch)

  def one_step(state, idx_B):
    return step_lib.train_step(
      state,
      x_u8[idx_B],
      keys["noise"],
      hparams,
      objective_fn=objectives.REGISTRY.get("elbo").target.fn,
    )

  one_step = jax.jit(one_step, donate_argnums=0)
  t0 = time.perf_counter()
  full_SxB, rest_R = order(1)
  batches = lambda full_SxB, rest_R: [*full_SxB, *([rest_R] if rest_R.shape[0] else [])]
  for idx_B in batches(full_SxB[:1], rest_R):  # Compiles both batch shapes, on a throwaway copy.
    jax.block_until_ready(one_step(jax.tree.map(jnp.copy, state), idx_B))
  compile_seconds = time.perf_counter() - t0
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    full_SxB, rest_R = order(epoch)
    total = 0.0
    for idx_B in batches(full_SxB, rest_R):
      state, metrics = one_step(state, idx_B)
      total = total + metrics["loss"]  # Stays on the device: no host sync per step.
    losses.append(float(total) / n)
    seconds.append(time.perf_counter() - t0)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds, "train_loss": losses}


def time_torch(data_path: str, num_epochs: int) -> dict:
  from experiments import pytorch_reference  # Imports torch.

  splits = data.load_data(default.get_config())
  records = pytorch_reference.train(
    splits["train"][0],
    splits["test"][0],
    data_path=data_path,
    epochs=num_epochs,
    log=lambda *_: None,
  )
  return {
    "epoch_seconds": [r["train_seconds"] for r in records],
    "compile_seconds": None,
    "train_loss": [r["train_loss"] for r in records],
  }


def device_peak_bytes() -> int | None:
  """Peak bytes in use on the first device so far (None where the backend does not say)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_models(
  counts: list[int],
  num_epochs: int,
  strategies=("loop", "map", "vmap"),
  base_config=None,
  sequential: int | None = None,
) -> dict:
  """K models of one group (each strategy) versus K sequential runs of the compiled epoch.

  All train seeds 1..K on the config's training split (default: the reference's); seconds
  count epochs 2..N (compiled already). The sequential runs (``sequential``: how many,
  default max K) share one compiled single-model epoch (same shapes), so their time is pure
  training; the sums over the first K runs give every K from one pass. peak_bytes: the
  device's peak after each K (counts ascending: each K's own peak), where the backend says.
  """
  base_config = base_config or default.get_config()
  config = ml_collections.ConfigDict(base_config.to_dict())
  splits = data.load_data(config)
  x_train, x_test = jax.device_put((splits["train"][0], splits["test"][0]))
  in_program, peak_bytes = {}, {}
  for strategy in strategies:
    config.run.models_strategy = strategy
    for k in counts:
      group = group_lib.make_group(config, splits, [{"seed": s} for s in range(1, k + 1)])
      states, keys = group_lib.create_states(group)
      programs = Programs(group, states, keys, x_train, x_test, chunks=1)
      seconds, _ = time_epochs(programs, states, keys, num_epochs)
      in_program[f"{strategy}_{k}"] = sum(seconds[1:])
      peak_bytes[f"{strategy}_{k}"] = device_peak_bytes()
      del programs, states, keys
  programs, template, _, _ = reference_programs(base_config)
  per_run = []
  for seed in range(1, (sequential or max(counts)) + 1):
    config = ml_collections.ConfigDict(base_config.to_dict())
    config.seed = seed
    states, keys = group_lib.create_states(group_lib.make_group(config, splits))
    # The compiled epoch wants the very optimizer object it was compiled with.
    states = template.replace(params=states.params, opt_state=states.opt_state, step=states.step)
    seconds, _ = time_epochs(programs, states, keys, num_epochs)
    per_run.append(sum(seconds[1:]))
  return {
    "epochs_timed": num_epochs - 1,
    "backend": jax.default_backend(),
    "in_program_seconds": in_program,
    "peak_bytes": peak_bytes,
    "sequential_seconds": {k: sum(per_run[:k]) for k in counts if k <= len(per_run)},
  }
