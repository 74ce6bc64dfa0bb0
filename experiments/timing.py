"""Timing of the training paths, one function each: what experiments/benchmark.py runs in a
fresh process per path, and profile_epoch.py reuses (the compiled epoch, matmul peak)."""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config as config_lib, data, group as group_lib, objectives, parallel
from vae_jax import step as step_lib, train
from vae_jax.configs import default
from vae_jax.epoch import Programs


def epoch_matmul_flops(config, num_examples: int, input_dim: int = 784) -> float:
  """Matmul FLOPs of one training epoch (2 per multiply-add)."""
  layers = [(input_dim, config.model.hidden_dim), (config.model.hidden_dim, config.model.latent_dim),
            (config.model.hidden_dim, config.model.latent_dim), (config.model.latent_dim, config.model.hidden_dim),
            (config.model.hidden_dim, input_dim)]
  macs = 0
  for i, (fan_in, fan_out) in enumerate(layers):
    passes = 2 if i == 0 else 3  # forward, weight grad, input grad (not for the data)
    macs += passes * fan_in * fan_out
  return 2.0 * macs * num_examples


def _best_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> dict[str, float]:
  """Best float32 GFLOP/s of an n x n matmul through XLA and through numpy's BLAS."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  xla = 2 * n**3 / _best_seconds(lambda: matmul(a).block_until_ready(), repeats) / 1e9
  a_np = np.asarray(a)
  blas = 2 * n**3 / _best_seconds(lambda: a_np @ a_np, repeats) / 1e9
  return {"xla": xla, "numpy": blas}


def reference_programs(config, num_devices: int = 1):
  """(programs, states, keys, compile seconds): the config's compiled epoch, in one chunk,
  of one model, with the bundled train split on the device(s)."""
  splits = data.load_data(config_lib.parse(config).data)
  group = group_lib.make_group(config, splits)
  mesh = parallel.make_mesh(num_devices)
  states, keys = parallel.replicate(group_lib.create_states(group), mesh)
  x_train, x_test = parallel.replicate((splits["train"][0], splits["test"][0]), mesh)
  t0 = time.perf_counter()
  programs = Programs(group, states, keys, x_train, x_test, mesh, chunks=1)
  return programs, states, keys, time.perf_counter() - t0


def time_epochs(programs, states, keys, num_epochs: int) -> tuple[list[float], list[float]]:
  """(seconds, train loss) of each epoch; reading the loss waits for the epoch."""
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    states, sums = programs.train_epoch(states, keys, epoch)
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
    _, records = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
  compile_seconds = records[0]["compile_seconds"]
  return {"epoch_seconds": [r["train_seconds"] for r in records], "compile_seconds": compile_seconds,
          "train_loss": [r["train_loss"] for r in records],
          "wall_seconds_per_epoch": (wall - compile_seconds) / num_epochs}


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
    return step_lib.train_step(state, x_u8[idx_B], keys["noise"], hparams,
                               objective_fn=objectives.REGISTRY.get("elbo").target.fn)

  one_step = jax.jit(one_step, donate_argnums=0)
  t0 = time.perf_counter()
  full_SxB, rest_R = order(1)
  for idx_B in (full_SxB[0], rest_R):  # Compiles both batch shapes, on a throwaway copy.
    jax.block_until_ready(one_step(jax.tree.map(jnp.copy, state), idx_B))
  compile_seconds = time.perf_counter() - t0
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    full_SxB, rest_R = order(epoch)
    total = 0.0
    for idx_B in [*full_SxB, rest_R]:
      state, metrics = one_step(state, idx_B)
      total = total + metrics["loss"]  # Stays on the device: no host sync per step.
    losses.append(float(total) / n)
    seconds.append(time.perf_counter() - t0)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds, "train_loss": losses}


def time_torch(data_path: str, num_epochs: int) -> dict:
  from experiments import pytorch_reference  # Imports torch.
  splits = data.load_data(config_lib.parse(default.get_config()).data)
  records = pytorch_reference.train(splits["train"][0], splits["test"][0], data_path=data_path,
                                    epochs=num_epochs, log=lambda *_: None)
  return {"epoch_seconds": [r["train_seconds"] for r in records], "compile_seconds": None,
          "train_loss": [r["train_loss"] for r in records]}


def time_models(counts: list[int], num_epochs: int) -> dict:
  """K models of one group (each strategy) versus K sequential runs of the compiled epoch.

  All train seeds 1..K on the full training split; seconds count epochs 2..N (compiled
  already). The sequential runs share one compiled single-model epoch (same shapes), so their
  time is pure training; the sums over the first K runs give every K from one pass.
  """
  config = default.get_config()
  splits = data.load_data(config_lib.parse(config).data)
  x_train, x_test = jax.device_put((splits["train"][0], splits["test"][0]))
  in_program = {}
  for strategy in ("loop", "map", "vmap"):
    config.run.models_strategy = strategy
    for k in counts:
      group = group_lib.make_group(config, splits, [{"seed": s} for s in range(1, k + 1)])
      states, keys = group_lib.create_states(group)
      programs = Programs(group, states, keys, x_train, x_test, chunks=1)
      seconds, _ = time_epochs(programs, states, keys, num_epochs)
      in_program[f"{strategy}_{k}"] = sum(seconds[1:])
  programs, template, _, _ = reference_programs(default.get_config())
  per_run = []
  for seed in range(1, max(counts) + 1):
    config = default.get_config()
    config.seed = seed
    states, keys = group_lib.create_states(group_lib.make_group(config, splits))
    # The compiled epoch wants the very optimizer object it was compiled with.
    states = template.replace(params=states.params, opt_state=states.opt_state, step=states.step)
    seconds, _ = time_epochs(programs, states, keys, num_epochs)
    per_run.append(sum(seconds[1:]))
  return {"epochs_timed": num_epochs - 1, "backend": jax.default_backend(),
          "in_program_seconds": in_program,
          "sequential_seconds": {k: sum(per_run[:k]) for k in counts}}
