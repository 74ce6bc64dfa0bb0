"""Does bfloat16 compute change what the reference VAE learns?

Run:
  .venv/bin/python -m experiments.mixed_precision                  # 3 seeds x 10 epochs, ~4 min on 2 cores
  .venv/bin/python -m experiments.mixed_precision --seeds 5 --json runs/mixed_precision.json

Trains the reference recipe with config.model.compute_dtype = float32 and = bfloat16 (layers in
bf16; parameters, Adam state, noise and the loss in float32) for the same seeds, and
prints a markdown table: final test loss (one-sample ELBO, nats per example), test loss at
z = mu, and median train seconds per epoch, each as mean +- std over seeds, plus the
per-seed difference bf16 - float32. On a CPU bf16 is emulated and slower; the speed
question belongs to GPUs and TPUs, the loss question is answered anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

import numpy as np

import vae_jax
from vae_jax import data
from vae_jax.configs import default

DTYPES = ("float32", "bfloat16")


def run(dtype: str, seed: int, epochs: int, splits, workdir: str) -> dict:
  config = default.get_config()
  config.seed, config.optim.num_epochs, config.model.compute_dtype = seed, epochs, dtype
  config.run.progress, config.run.save_images = False, False
  _, records = vae_jax.train(config, workdir, splits)
  return {
    "test_loss": records[-1]["test_loss"],
    "test_loss_mean_z": records[-1]["test_loss_mean_z"],
    "seconds_per_epoch": statistics.median(r["train_seconds"] for r in records[1:]),
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--json", help="also write every number to this JSON file")
  args = parser.parse_args()
  if args.seeds < 1 or args.epochs < 2:
    parser.error("--seeds must be >= 1 and --epochs >= 2")
  splits = data.load_data(default.get_config())
  results: dict[str, list[dict]] = {dtype: [] for dtype in DTYPES}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(1, args.seeds + 1):
      for dtype in DTYPES:
        print(f"seed {seed}, {dtype} ...", file=sys.stderr)
        results[dtype].append(run(dtype, seed, args.epochs, splits, f"{tmp}/{dtype}_{seed}"))

  def stat(dtype, key):
    values = np.array([r[key] for r in results[dtype]])
    return f"{values.mean():.3f} +- {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

  print(f"| compute dtype | test loss (epoch {args.epochs}) | test loss, z = mu | s/epoch |")
  print("| --- | ---: | ---: | ---: |")
  for dtype in DTYPES:
    print(
      f"| {dtype} | {stat(dtype, 'test_loss')} | {stat(dtype, 'test_loss_mean_z')} | "
      f"{stat(dtype, 'seconds_per_epoch')} |"
    )
  diffs = [b["test_loss"] - f["test_loss"] for f, b in zip(results["float32"], results["bfloat16"])]
  print(
    f"\nbf16 - float32 final test loss per seed: {', '.join(f'{d:+.3f}' for d in diffs)} "
    f"(mean {np.mean(diffs):+.3f} nats); {args.seeds} seeds x {args.epochs} epochs."
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"epochs": args.epochs, "results": results, "differences": diffs}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
