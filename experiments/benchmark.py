"""How fast is the compiled epoch, against what this machine's matmul units can do?

Run:
  .venv/bin/python experiments/benchmark.py            # reference config, 6 epochs
  .venv/bin/python experiments/benchmark.py --epochs 11 --json runs/benchmark.json

Prints one markdown table: median train seconds per epoch over epochs 2..N (epoch 1 pays
for nothing extra: compilation is done ahead of time, but caches warm up), examples/s,
the epoch's matmul GFLOP/s and that as a fraction of the float32 matmul peak measured in
the same run (the best of XLA's and numpy's large square matmuls). Matmul FLOPs are
counted from the layer shapes: forward, weight gradients and input gradients, except
the input gradient of the first layer, which nothing needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import train
from vae_jax.configs import default


def epoch_matmul_flops(config, num_examples: int, input_dim: int = 784) -> float:
  """Matmul FLOPs of one training epoch (2 per multiply-add)."""
  layers = [(input_dim, config.hidden_dim), (config.hidden_dim, config.latent_dim),
            (config.hidden_dim, config.latent_dim), (config.latent_dim, config.hidden_dim),
            (config.hidden_dim, input_dim)]
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


def time_epochs(config, num_epochs: int) -> dict:
  """Trains on bundled MNIST with the compiled epoch; returns per-epoch train seconds."""
  splits = train.load_data(config)
  x_u8 = splits["train"][0]
  n = len(x_u8)
  rng_init, rng_shuffle, rng_noise = jax.random.split(jax.random.key(config.seed), 3)
  state = train.create_train_state(config, rng_init)
  x_u8_NxD = jax.device_put(x_u8.reshape(n, -1))
  beta = jnp.float32(config.beta)
  t0 = time.perf_counter()
  epoch_fn = train.compile_train_epoch(state, x_u8_NxD, rng_shuffle, rng_noise, beta,
                                       batch_size=config.batch_size)
  compile_seconds = time.perf_counter() - t0
  seconds, losses = [], []
  for epoch in range(1, num_epochs + 1):
    t0 = time.perf_counter()
    state, sums = epoch_fn(state, x_u8_NxD, jnp.int32(epoch), rng_shuffle, rng_noise, beta)
    loss = float(sums["loss"]) / n  # Reading the result waits for the epoch.
    seconds.append(time.perf_counter() - t0)
    losses.append(loss)
  return {"num_examples": n, "compile_seconds": compile_seconds, "epoch_seconds": seconds,
          "train_loss": losses}


def describe_machine() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=6, help="epochs to time (median over 2..N)")
  parser.add_argument("--json", help="also write every number to this JSON file")
  args = parser.parse_args()
  if args.epochs < 2:
    parser.error("--epochs must be at least 2 (the median is over epochs 2..N)")

  config = default.get_config()
  machine = describe_machine()
  peak_before = matmul_peak_gflops()
  run = time_epochs(config, args.epochs)
  peak_after = matmul_peak_gflops()
  peak = max(*peak_before.values(), *peak_after.values())
  median_s = statistics.median(run["epoch_seconds"][1:])
  flops = epoch_matmul_flops(config, run["num_examples"])
  result = {
      "machine": machine,
      "config": "vae_jax/configs/default.py (the reference)",
      "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "used": peak},
      "epoch_matmul_gflop": flops / 1e9,
      "median_epoch_seconds": median_s,
      "examples_per_second": run["num_examples"] / median_s,
      "gflops": flops / median_s / 1e9,
      "peak_fraction": flops / median_s / 1e9 / peak,
      **run,
  }
  print(f"Machine: {machine['cpu']}, {machine['cores']} cores, backend {machine['backend']}, "
        f"jax {machine['jax']}" + (f", XLA_FLAGS={machine['xla_flags']}" if machine["xla_flags"] else ""))
  print(f"Epoch seconds: {', '.join(f'{s:.3f}' for s in run['epoch_seconds'])} "
        f"(compile {run['compile_seconds']:.2f} s)")
  print()
  print("| path | median s/epoch (2..N) | examples/s | matmul GFLOP/s | f32 matmul peak GFLOP/s | fraction of peak |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  print(f"| compiled epoch (lax.scan) | {median_s:.3f} | {result['examples_per_second']:,.0f} | "
        f"{result['gflops']:.1f} | {peak:.1f} | {result['peak_fraction']:.0%} |")
  print(f"\nEpoch matmul work: {flops / 1e9:.1f} GFLOP. Peak: best of XLA "
        f"({max(peak_before['xla'], peak_after['xla']):.1f}) and numpy "
        f"({max(peak_before['numpy'], peak_after['numpy']):.1f}) 2048^2 matmuls, before and after.")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
