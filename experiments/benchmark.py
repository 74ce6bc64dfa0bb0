"""How fast does the reference VAE train, by each path, against this machine's matmul peak?

Run:
  .venv/bin/python -m experiments.benchmark                       # everything, ~4 minutes on 2 cores
  .venv/bin/python -m experiments.benchmark --epochs 6 --json runs/benchmark.json
  .venv/bin/python -m experiments.benchmark --paths scan train    # a subset

One run measures, each path in a fresh process of its own (so compile time and peak
memory are that path's alone), on the bundled MNIST with the reference config:
- ``scan``: the compiled epoch (one XLA call per epoch: lax.scan over the batches);
- ``train``: the default ``python -m vae_jax train`` as a user runs it (progress bar on: the
  epoch in 10 chunks read one chunk late; evaluation, checkpoints, images every epoch);
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
import resource
import statistics
import subprocess
import sys
from typing import Any

import jax

from experiments import machine as machine_lib
from experiments.timing import (
  epoch_matmul_flops,
  matmul_peak_gflops,
  matmul_tflops,
  time_loop,
  time_models,
  time_scan,
  time_torch,
  time_train_command,
)
from vae_jax.configs import default

PATHS = (
  "scan",
  "train",
  "scan_bf16",
  "loop",
  "torch_reference",
  "torch_preloaded",
  "scan_2dev",
  "scan_4dev",
  "scan_8dev",
)


def run_worker(path: str, num_epochs: int) -> dict:
  """Measures one path in this process; adds peak memory."""
  config = default.get_config()
  if path == "scan":
    result = time_scan(config, num_epochs)
  elif path == "train":
    result = time_train_command(config, num_epochs)
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


def machine_and_peak() -> dict:
  """The machine and its float32 matmul peak (GFLOP/s): on a CPU the best of XLA's and
  numpy's 2048^2 products; on an accelerator chained 8192^2 products at 'highest' (the
  precision the runs use), one sync per program."""
  machine = machine_lib.describe_machine()
  if machine["backend"] == "cpu":
    peak = matmul_peak_gflops()
  else:
    peak = {"xla": matmul_tflops(8192, precision="highest") * 1e3, "numpy": 0.0}
  return {"machine": machine, "peak": peak}


def measure(path: str, num_epochs: int, backend: str = "cpu") -> dict:
  """Runs one path in a fresh process (simulated devices set through XLA_FLAGS on a CPU).

  The parent never starts a backend itself: on a GPU it would hold the memory its children
  need."""
  env = dict(os.environ)
  if path.endswith("dev") and backend == "cpu":
    count = path.removeprefix("scan_")[:-3]
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.benchmark", "--worker", path, "--epochs", str(num_epochs)],
    capture_output=True,
    text=True,
    env=env,
  )
  if proc.returncode:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _label(path: str, backend: str) -> str:
  labels = {
    "scan": "compiled epoch (lax.scan), float32",
    "train": "default `train` command (progress bar: epoch in 10 chunks)",
    "scan_bf16": "compiled epoch, bfloat16 compute",
    "loop": "Python loop of jitted steps",
    "torch_reference": "PyTorch reference (DataLoader, convert on access)",
    "torch_preloaded": "PyTorch, preloaded tensor + randperm",
  }
  if path in labels:
    # PyTorch runs on the CPU here whatever the JAX backend is.
    return labels[path] + (
      " (on the CPU)" if path.startswith("torch_") and backend != "cpu" else ""
    )
  count = path.removeprefix("scan_")[:-3]
  return f"compiled epoch, {count} devices" + (
    " (simulated on the CPU cores)" if backend == "cpu" else ""
  )


def print_models(run: dict) -> None:
  """Table: K models in one program (map, vmap) vs K sequential runs, model-epochs per second."""
  print(
    "\n| models K | sequential s (K runs) | loop s | lax.map s | vmap s | loop / seq | "
    "map / seq | vmap / seq |"
  )
  print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  if "error" in run:
    print(f"| {run['error']} | | | | | | | |")
    return
  e = run["epochs_timed"]
  for k, seq in run["sequential_seconds"].items():
    s = {
      strategy: run["in_program_seconds"][f"{strategy}_{k}"] for strategy in ("loop", "map", "vmap")
    }
    print(
      f"| {k} | {seq:.2f} | {s['loop']:.2f} | {s['map']:.2f} | {s['vmap']:.2f} | "
      f"{s['loop'] / seq:.3f} | {s['map'] / seq:.3f} | {s['vmap'] / seq:.3f} |"
    )
  print(
    f"(seconds over {e} epochs after the first; run.models_strategy='auto' picks "
    f"{'map' if run['backend'] == 'cpu' else 'vmap'} on {run['backend']})"
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--epochs", type=int, default=4, help="epochs per JAX path (median over 2..N)"
  )
  parser.add_argument("--torch-epochs", type=int, default=2, help="epochs per PyTorch path")
  parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
  parser.add_argument("--json", help="also write every number to this JSON file")
  parser.add_argument(
    "--models",
    type=int,
    nargs="*",
    default=[4, 16],
    help="model counts K in one program vs sequential (none: skip)",
  )
  parser.add_argument("--model-epochs", type=int, default=2, help="epochs per model (timed: 2..N)")
  parser.add_argument("--worker", choices=(*PATHS, "models", "machine"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.epochs < 2 or args.torch_epochs < 2:
    parser.error("--epochs and --torch-epochs must be at least 2 (the median is over epochs 2..N)")
  if args.worker == "machine":
    print(json.dumps(machine_and_peak()))
    return 0
  if args.worker == "models":
    print(json.dumps(time_models(args.models, args.model_epochs)))
    return 0
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.epochs)))
    return 0

  config = default.get_config()
  first = measure("machine", 2)
  if "error" in first:
    print(f"benchmark: the machine worker failed: {first['error']}", file=sys.stderr)
    return 1
  machine, peak_before = first["machine"], first["peak"]
  flops = epoch_matmul_flops(config, 60_000)
  runs: dict[str, dict[str, Any]] = {}  # Per path: what its worker measured, or an error.
  for path in args.paths:
    if path.startswith("torch_"):
      try:
        import torch  # noqa: F401
      except ImportError:
        runs[path] = {"error": "torch not installed (pip install '.[torch]')"}
        continue
    epochs = args.torch_epochs if path.startswith("torch_") else args.epochs
    print(f"measuring {path} ({epochs} epochs) ...", file=sys.stderr)
    runs[path] = measure(path, epochs, machine["backend"])
  if args.models:
    print(f"measuring {args.models} models in one program vs sequential ...", file=sys.stderr)
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--worker",
        "models",
        "--models",
        *map(str, args.models),
        "--model-epochs",
        str(args.model_epochs),
      ],
      capture_output=True,
      text=True,
    )
    runs["models"] = (
      json.loads(proc.stdout.strip().splitlines()[-1])
      if proc.returncode == 0
      else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    )
  peak_after = measure("machine", 2).get("peak", peak_before)
  peak = max(*peak_before.values(), *peak_after.values())

  rows = []
  for path, run in runs.items():
    if path == "models":
      continue
    if "error" in run:
      rows.append(f"| {_label(path, machine['backend'])} | {run['error']} | | | | | |")
      continue
    median_s = statistics.median(run["epoch_seconds"][1:])
    run.update(
      median_epoch_seconds=median_s,
      examples_per_second=60_000 / median_s,
      gflops=flops / median_s / 1e9,
      peak_fraction=flops / median_s / 1e9 / peak,
    )
    compile_s = "n/a" if run["compile_seconds"] is None else f"{run['compile_seconds']:.2f}"
    memory = f"{run['peak_rss_mib']:,.0f}" + (
      f" (device {run['peak_device_mib']:,.0f})" if "peak_device_mib" in run else ""
    )
    rows.append(
      f"| {_label(path, machine['backend'])} | {median_s:.3f} | {run['examples_per_second']:,.0f} | "
      f"{run['gflops']:.1f} | {run['peak_fraction']:.0%} | {compile_s} | {memory} |"
    )
  scan = runs.get("scan", {}).get("median_epoch_seconds")
  if scan and "median_epoch_seconds" in runs.get("train", {}):
    command = runs["train"]
    print(
      f"\nDefault `train` command: {command['median_epoch_seconds']:.3f} s per epoch of training "
      f"({command['median_epoch_seconds'] / scan:.3f}x the compiled epoch's {scan:.3f} s); "
      f"{command['wall_seconds_per_epoch']:.3f} s per epoch with evaluation, checkpoint, images and "
      "TensorBoard."
    )
  print(
    f"Machine: {machine['cpu']}, {machine['cores']} cores, backend {machine['backend']}, "
    f"jax {machine['jax']}, jaxlib {machine['jaxlib']}"
    + (f", XLA_FLAGS={machine['xla_flags']}" if machine["xla_flags"] else "")
  )
  print(
    f"Float32 matmul peak: {peak:.1f} GFLOP/s (best of XLA {max(peak_before['xla'], peak_after['xla']):.1f} "
    f"and numpy {max(peak_before['numpy'], peak_after['numpy']):.1f}, 2048^2, before and after). "
    f"Epoch matmul work: {flops / 1e9:.1f} GFLOP."
  )
  print()
  print(
    "| path | median s/epoch (2..N) | examples/s | matmul GFLOP/s | fraction of f32 peak | compile s | peak memory MiB |"
  )
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  print("\n".join(rows))
  if scan and len(runs) > 1 + ("models" in runs):
    ratios = {
      p: r["median_epoch_seconds"] / scan
      for p, r in runs.items()
      if "median_epoch_seconds" in r and p != "scan"
    }
    print(
      "\nSeconds per epoch relative to the compiled epoch: "
      + ", ".join(f"{p} {x:.2f}x" for p, x in ratios.items())
    )
  if "models" in runs:
    print_models(runs["models"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "machine": machine,
          "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "used": peak},
          "epoch_matmul_gflop": flops / 1e9,
          "runs": runs,
        },
        f,
        indent=2,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
