"""How fast does the reference VAE train, by each path, against this machine's matmul peak?

Run:
  .venv/bin/python experiments/benchmark.py                       # everything, ~4 minutes on 2 cores
  .venv/bin/python experiments/benchmark.py --epochs 6 --json runs/benchmark.json
  .venv/bin/python experiments/benchmark.py --paths scan loop      # a subset

One run measures, each path in a fresh process of its own (so compile time and peak
memory are that path's alone), on the bundled MNIST with the reference config:
- ``scan``: the compiled epoch (one XLA call per epoch: lax.scan over the batches);
- ``scan_bf16``: the same with config.model.compute_dtype = bfloat16;
- ``loop``: a Python loop of jitted train steps (state donated, data on the device);
- ``torch_reference`` / ``torch_preloaded``: the PyTorch example's two data paths (when
  torch is installed);
- ``scan_2dev`` / ``scan_4dev`` / ``scan_8dev``: data parallelism over 2, 4, 8 devices.
  On a CPU these are *simulated* devices (XLA_FLAGS=--xla_force_host_platform_device_count)
  sharing the same cores: the row shows the overhead of the sharded program, not a speed-up.
Reported: median train seconds per epoch over epochs 2..N, examples/s, the epoch's matmul
GFLOP/s and its fraction of the float32 matmul peak measured in the same run (best of
XLA's and numpy's 2048^2 matmuls, before and after), compile seconds, peak memory (host
RSS of the path's process; on a GPU also the device's peak bytes in use). Output: a
markdown table, and every number as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import train
from vae_jax.configs import default

PATHS = ("scan", "scan_bf16", "loop", "torch_reference", "torch_preloaded", "scan_2dev",
         "scan_4dev", "scan_8dev")


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


def _setup(config, num_devices: int = 1):
  """(state, data, keys, mesh) for timing: the bundled train split replicated on the mesh."""
  x_u8 = train.load_data(config)["train"][0]
  rng_init, rng_shuffle, rng_noise = jax.random.split(jax.random.key(config.seed), 3)
  mesh = train.make_mesh(num_devices)
  state = train.replicate(train.create_train_state(config, rng_init), mesh)
  x_u8_NxD = train.replicate(x_u8.reshape(len(x_u8), -1), mesh)
  rng_shuffle, rng_noise = train.replicate((rng_shuffle, rng_noise), mesh)
  return state, x_u8_NxD, rng_shuffle, rng_noise, mesh


def time_scan(config, num_epochs: int, num_devices: int = 1) -> dict:
  """The compiled epoch: seconds per epoch, compile seconds."""
  state, x_u8_NxD, rng_shuffle, rng_noise, mesh = _setup(config, num_devices)
  beta = jnp.float32(config.objective.beta)
  t0 = time.perf_counter()
  epoch_fn = train.compile_train_epoch(state, x_u8_NxD, rng_shuffle, rng_noise, beta,
                                       batch_size=config.optim.batch_size, mesh=mesh)
  compile_seconds = time.perf_counter() - t0
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    state, sums = epoch_fn(state, x_u8_NxD, jnp.int32(epoch), rng_shuffle, rng_noise, beta)
    losses.append(float(sums["loss"]) / x_u8_NxD.shape[0])  # Reading it waits for the epoch.
    seconds.append(time.perf_counter() - t0)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds, "train_loss": losses}


def time_loop(config, num_epochs: int) -> dict:
  """A Python loop of jitted steps over the same batches (permutation drawn on the device)."""
  state, x_u8_NxD, rng_shuffle, rng_noise, _ = _setup(config)
  n, beta = x_u8_NxD.shape[0], jnp.float32(config.objective.beta)

  @jax.jit
  def order(epoch):
    return train.split_batches(jax.random.permutation(jax.random.fold_in(rng_shuffle, epoch), n),
                               config.optim.batch_size)

  def step(state, idx_B):
    return train.train_step(state, x_u8_NxD[idx_B], rng_noise, beta)

  step = jax.jit(step, donate_argnums=0)
  t0 = time.perf_counter()
  full_SxB, rest_R = order(1)
  for idx_B in (full_SxB[0], rest_R):  # Compiles both batch shapes, on a throwaway copy.
    jax.block_until_ready(step(jax.tree.map(jnp.copy, state), idx_B))
  compile_seconds = time.perf_counter() - t0
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    full_SxB, rest_R = order(epoch)
    total = 0.0
    for idx_B in [*full_SxB, rest_R]:
      state, metrics = step(state, idx_B)
      total = total + metrics["loss"]  # Stays on the device: no host sync per step.
    losses.append(float(total) / n)
    seconds.append(time.perf_counter() - t0)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds, "train_loss": losses}


def time_torch(data_path: str, num_epochs: int) -> dict:
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import pytorch_reference  # A script beside this one; imports torch.
  splits = train.load_data(default.get_config())
  records = pytorch_reference.train(splits["train"][0], splits["test"][0], data_path=data_path,
                                    epochs=num_epochs, log=lambda *_: None)
  return {"epoch_seconds": [r["train_seconds"] for r in records], "compile_seconds": None,
          "train_loss": [r["train_loss"] for r in records]}


def time_models(counts: list[int], num_epochs: int) -> dict:
  """K models vmapped in one program versus K sequential runs of the compiled epoch.

  Both train seeds 1..K on the full training split; seconds count epochs 2..N (compiled
  already). The sequential runs share one compiled epoch (same shapes), so their time is
  pure training; the sums over the first K runs give every K from one pass.
  """
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from vae_jax import many
  config = default.get_config()
  splits = train.load_data(config)
  vmapped = {}
  for k in counts:
    _, records = many.train_many(config, {"seed": list(range(1, k + 1))}, splits, num_epochs)
    vmapped[k] = sum(r["train_seconds"] for r in records[0][1:])
  x_u8_NxD = jnp.asarray(splits["train"][0].reshape(60_000, -1))
  beta, per_run = jnp.float32(config.objective.beta), []
  epoch_fn = template = None
  for seed in range(1, max(counts) + 1):
    rng_init, rng_shuffle, rng_noise = jax.random.split(jax.random.key(seed), 5)[:3]
    state = train.create_train_state(config, rng_init)
    if epoch_fn is None:
      template = state
      epoch_fn = train.compile_train_epoch(state, x_u8_NxD, rng_shuffle, rng_noise, beta,
                                           batch_size=config.optim.batch_size)
    # The compiled epoch wants the very optimizer object it was compiled with.
    state = template.replace(params=state.params, opt_state=state.opt_state, step=state.step)
    state, sums = epoch_fn(state, x_u8_NxD, jnp.int32(1), rng_shuffle, rng_noise, beta)
    jax.block_until_ready(sums)
    t0 = time.perf_counter()
    for epoch in range(2, num_epochs + 1):
      state, sums = epoch_fn(state, x_u8_NxD, jnp.int32(epoch), rng_shuffle, rng_noise, beta)
    jax.block_until_ready(sums)
    per_run.append(time.perf_counter() - t0)
  return {"epochs_timed": num_epochs - 1, "vmapped_seconds": vmapped,
          "sequential_seconds": {k: sum(per_run[:k]) for k in counts}}


def run_worker(path: str, num_epochs: int) -> dict:
  """Measures one path in this process; adds peak memory."""
  config = default.get_config()
  if path == "scan":
    result = time_scan(config, num_epochs)
  elif path == "scan_bf16":
    config.model.compute_dtype = "bfloat16"
    result = time_scan(config, num_epochs)
  elif path == "loop":
    result = time_loop(config, num_epochs)
  elif path.startswith("torch_"):
    result = time_torch(path.removeprefix("torch_"), num_epochs)
  else:
    result = time_scan(config, num_epochs, num_devices=int(path.removeprefix("scan_")[:-3]))
  result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    result["peak_device_mib"] = stats["peak_bytes_in_use"] / 2**20
  result["devices"] = [str(d) for d in jax.devices()]
  return result


def measure(path: str, num_epochs: int) -> dict:
  """Runs one path in a fresh process (simulated devices set through XLA_FLAGS)."""
  env = dict(os.environ)
  if path.endswith("dev") and jax.default_backend() == "cpu":
    count = path.removeprefix("scan_")[:-3]
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  proc = subprocess.run([sys.executable, __file__, "--worker", path, "--epochs", str(num_epochs)],
                        capture_output=True, text=True, env=env)
  if proc.returncode:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def describe_machine() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import jaxlib
  return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _label(path: str, backend: str) -> str:
  labels = {"scan": "compiled epoch (lax.scan), float32", "scan_bf16": "compiled epoch, bfloat16 compute",
            "loop": "Python loop of jitted steps", "torch_reference": "PyTorch reference (DataLoader, convert on access)",
            "torch_preloaded": "PyTorch, preloaded tensor + randperm"}
  if path in labels:
    return labels[path]
  count = path.removeprefix("scan_")[:-3]
  return f"compiled epoch, {count} devices" + (" (simulated on the CPU cores)" if backend == "cpu" else "")


def print_models(run: dict) -> None:
  """Table: K models vmapped vs K sequential runs, model-epochs per second."""
  print("\n| models K | vmapped s (all K, per epoch) | sequential s (K runs, per epoch) | "
        "vmapped model-epochs/s | sequential model-epochs/s | vmapped / sequential wall |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  if "error" in run:
    print(f"| {run['error']} | | | | | |")
    return
  e = run["epochs_timed"]
  for k, vm in run["vmapped_seconds"].items():
    seq = run["sequential_seconds"][k]
    k = int(k)
    print(f"| {k} | {vm / e:.2f} | {seq / e:.2f} | {k * e / vm:.3f} | {k * e / seq:.3f} | {vm / seq:.2f} |")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=4, help="epochs per JAX path (median over 2..N)")
  parser.add_argument("--torch-epochs", type=int, default=2, help="epochs per PyTorch path")
  parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
  parser.add_argument("--json", help="also write every number to this JSON file")
  parser.add_argument("--models", type=int, nargs="*", default=[1, 4, 16],
                      help="model counts K for vmapped vs sequential (none: skip)")
  parser.add_argument("--model-epochs", type=int, default=2, help="epochs per model (timed: 2..N)")
  parser.add_argument("--worker", choices=(*PATHS, "models"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.epochs < 2 or args.torch_epochs < 2:
    parser.error("--epochs and --torch-epochs must be at least 2 (the median is over epochs 2..N)")
  if args.worker == "models":
    print(json.dumps(time_models(args.models, args.model_epochs)))
    return 0
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.epochs)))
    return 0

  config = default.get_config()
  machine = describe_machine()
  flops = epoch_matmul_flops(config, 60_000)
  peak_before = matmul_peak_gflops()
  runs = {}
  for path in args.paths:
    if path.startswith("torch_"):
      try:
        import torch  # noqa: F401
      except ImportError:
        runs[path] = {"error": "torch not installed (pip install '.[torch]')"}
        continue
    epochs = args.torch_epochs if path.startswith("torch_") else args.epochs
    print(f"measuring {path} ({epochs} epochs) ...", file=sys.stderr)
    runs[path] = measure(path, epochs)
  if args.models:
    print(f"measuring {args.models} models vmapped vs sequential ...", file=sys.stderr)
    proc = subprocess.run([sys.executable, __file__, "--worker", "models", "--models",
                           *map(str, args.models), "--model-epochs", str(args.model_epochs)],
                          capture_output=True, text=True)
    runs["models"] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                      else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
  peak_after = matmul_peak_gflops()
  peak = max(*peak_before.values(), *peak_after.values())

  rows = []
  for path, run in runs.items():
    if path == "models":
      continue
    if "error" in run:
      rows.append(f"| {_label(path, machine['backend'])} | {run['error']} | | | | | |")
      continue
    median_s = statistics.median(run["epoch_seconds"][1:])
    run.update(median_epoch_seconds=median_s, examples_per_second=60_000 / median_s,
               gflops=flops / median_s / 1e9, peak_fraction=flops / median_s / 1e9 / peak)
    compile_s = "n/a" if run["compile_seconds"] is None else f"{run['compile_seconds']:.2f}"
    memory = f"{run['peak_rss_mib']:,.0f}" + (f" (device {run['peak_device_mib']:,.0f})"
                                              if "peak_device_mib" in run else "")
    rows.append(f"| {_label(path, machine['backend'])} | {median_s:.3f} | {run['examples_per_second']:,.0f} | "
                f"{run['gflops']:.1f} | {run['peak_fraction']:.0%} | {compile_s} | {memory} |")
  scan = runs.get("scan", {}).get("median_epoch_seconds")
  print(f"Machine: {machine['cpu']}, {machine['cores']} cores, backend {machine['backend']}, "
        f"jax {machine['jax']}, jaxlib {machine['jaxlib']}"
        + (f", XLA_FLAGS={machine['xla_flags']}" if machine["xla_flags"] else ""))
  print(f"Float32 matmul peak: {peak:.1f} GFLOP/s (best of XLA {max(peak_before['xla'], peak_after['xla']):.1f} "
        f"and numpy {max(peak_before['numpy'], peak_after['numpy']):.1f}, 2048^2, before and after). "
        f"Epoch matmul work: {flops / 1e9:.1f} GFLOP.")
  print()
  print("| path | median s/epoch (2..N) | examples/s | matmul GFLOP/s | fraction of f32 peak | compile s | peak memory MiB |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  print("\n".join(rows))
  if scan and len(runs) > 1 + ("models" in runs):
    ratios = {p: r["median_epoch_seconds"] / scan for p, r in runs.items()
              if "median_epoch_seconds" in r and p != "scan"}
    print("\nSeconds per epoch relative to the compiled epoch: "
          + ", ".join(f"{p} {x:.2f}x" for p, x in ratios.items()))
  if "models" in runs:
    print_models(runs["models"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": machine, "matmul_peak_gflops": {"before": peak_before, "after": peak_after,
                 "used": peak}, "epoch_matmul_gflop": flops / 1e9, "runs": runs}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
