"""Is vae_jax the PyTorch reference, number for number, and how much faster is it?

Run (needs the experiments extra: torch 2.13.0 CPU and matplotlib):
  .venv/bin/python -m experiments.compare_pytorch --seeds 3 --epochs 10 --out runs/compare

Trains, in one run on one machine, the JAX model and the PyTorch reference along both of
its data paths ('reference': convert each item on access, as MNIST + ToTensor;
'preloaded': one float tensor, randperm batches) for S seeds each, same data and
hyper-parameters. Writes to --out:
- compare.md: per-epoch train and test loss, mean +/- std over seeds, per implementation;
  train seconds per epoch; speed ratios; the verdict;
- test_loss.png: test-loss curves with min-max seed bands;
- compare.json: every number.
Verdict: final test losses are called indistinguishable when Welch's t-test does not
reject equal means at 5 % AND the means differ by less than 0.3 nats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

import vae_jax
from experiments import machine as machine_lib, pytorch_reference
from vae_jax import data
from vae_jax.configs import default

IMPLEMENTATIONS = ("jax", "torch_reference", "torch_preloaded")
TOLERANCE_NATS = 0.3


def run_jax(seed: int, epochs: int, splits, workdir: Path) -> list[dict]:
  config = default.get_config()
  config.seed, config.optim.num_epochs = seed, epochs
  config.run.progress, config.run.save_images = False, False
  _, records = vae_jax.train(config, workdir, splits)
  return [{k: r[k] for k in ("epoch", "train_loss", "test_loss", "train_seconds")} for r in records]


def mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: dict[str, list[list[dict]]], epochs: int) -> dict:
  """Per implementation and epoch: mean/std over seeds of losses and seconds."""
  summary = {}
  for impl, seeds in runs.items():
    rows = []
    for e in range(epochs):
      row: dict[str, int | tuple[float, float]] = {"epoch": e + 1}
      for key in ("train_loss", "test_loss", "train_seconds"):
        row[key] = mean_std([s[e][key] for s in seeds])
      rows.append(row)
    # Seconds per epoch: median over epochs 2..N (epoch 1 warms caches), mean over seeds.
    per_seed = [
      statistics.median([r["train_seconds"] for r in s[1:]] or [s[0]["train_seconds"]])
      for s in seeds
    ]
    summary[impl] = {
      "epochs": rows,
      "seconds_per_epoch": float(np.mean(per_seed)),
      "final_test_losses": [s[-1]["test_loss"] for s in seeds],
    }
  return summary


def verdicts(summary: dict) -> dict:
  out = {}
  jax_final = summary["jax"]["final_test_losses"]
  for impl in IMPLEMENTATIONS[1:]:
    other = summary[impl]["final_test_losses"]
    diff = float(np.mean(jax_final) - np.mean(other))
    p = (
      float(stats.ttest_ind(jax_final, other, equal_var=False).pvalue)
      if len(other) > 1
      else float("nan")
    )
    same = bool(abs(diff) < TOLERANCE_NATS and not p < 0.05)
    out[impl] = {
      "mean_difference": diff,
      "welch_p": p,
      "indistinguishable": same,
      "speed_ratio": summary[impl]["seconds_per_epoch"] / summary["jax"]["seconds_per_epoch"],
    }
  return out


def markdown(summary: dict, verdict: dict, seeds: int, machine: str) -> str:
  fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"
  lines = [
    f"Seeds: {seeds}. Machine: {machine}. Losses in nats per example (mean ± std over seeds).",
    "",
    "| epoch | " + " | ".join(f"{i} train | {i} test" for i in IMPLEMENTATIONS) + " |",
    "| ---: |" + " ---: | ---: |" * len(IMPLEMENTATIONS),
  ]
  for e, _ in enumerate(summary["jax"]["epochs"]):
    cells = []
    for impl in IMPLEMENTATIONS:
      row = summary[impl]["epochs"][e]
      cells += [fmt(row["train_loss"]), fmt(row["test_loss"])]
    lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "| implementation | train s/epoch (median of epochs 2..N, mean over seeds) | JAX speed-up |",
    "| --- | ---: | ---: |",
  ]
  for impl in IMPLEMENTATIONS:
    ratio = 1.0 if impl == "jax" else verdict[impl]["speed_ratio"]
    lines.append(f"| {impl} | {summary[impl]['seconds_per_epoch']:.3f} | {ratio:.2f}x |")
  lines.append("")
  for impl, v in verdict.items():
    word = "indistinguishable" if v["indistinguishable"] else "DIFFERENT"
    lines.append(
      f"Verdict jax vs {impl}: final test loss {word} (mean difference "
      f"{v['mean_difference']:+.3f} nats, Welch's t-test p = {v['welch_p']:.3f}; "
      f"criterion: p >= 0.05 and |difference| < {TOLERANCE_NATS})."
    )
  return "\n".join(lines)


def plot(summary: dict, runs: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for impl in IMPLEMENTATIONS:
    curves = np.array([[r["test_loss"] for r in s] for s in runs[impl]])
    epochs = np.arange(1, curves.shape[1] + 1)
    ax.plot(epochs, curves.mean(0), label=impl)
    ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test loss (nats per example)")
  ax.set_title("MNIST VAE: vae_jax vs the PyTorch reference")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--device", default="cpu", help="torch device for the reference")
  parser.add_argument("--out", default="runs/compare")
  parser.add_argument("--data-source", choices=data.SOURCES, default="bundled")
  parser.add_argument("--data-dir", default="")
  args = parser.parse_args()
  if args.epochs < 1 or args.seeds < 1:
    parser.error("--epochs and --seeds must be at least 1")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  splits = {s: data.load_split(args.data_source, s, args.data_dir) for s in ("train", "test")}
  x_train, x_test = splits["train"][0], splits["test"][0]
  runs: dict[str, list[list[dict]]] = {impl: [] for impl in IMPLEMENTATIONS}
  bar = tqdm(total=len(IMPLEMENTATIONS) * args.seeds * args.epochs, unit="epoch", file=sys.stderr)
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(1, args.seeds + 1):
      bar.set_description(f"jax seed {seed}")
      runs["jax"].append(run_jax(seed, args.epochs, splits, Path(tmp) / f"jax_{seed}"))
      bar.update(args.epochs)
      for path in ("reference", "preloaded"):
        bar.set_description(f"torch {path} seed {seed}")
        on_line = lambda line: bar.update(1) if line.startswith("====> Test") else None
        runs[f"torch_{path}"].append(
          pytorch_reference.train(
            x_train,
            x_test,
            data_path=path,
            epochs=args.epochs,
            seed=seed,
            device=args.device,
            log=on_line,
          )
        )
  bar.close()

  machine_info = machine_lib.describe_machine()
  import torch

  machine = (
    f"{machine_info['cpu']}, {machine_info['cores']} cores, jax {machine_info['jax']} "
    f"({machine_info['backend']}), torch {torch.__version__} ({args.device}, "
    f"{torch.get_num_threads()} threads)"
  )
  summary = summarize(runs, args.epochs)
  verdict = verdicts(summary)
  table = markdown(summary, verdict, args.seeds, machine)
  (out / "compare.md").write_text(table + "\n")
  plot(summary, runs, out / "test_loss.png")
  (out / "compare.json").write_text(
    json.dumps(
      {
        "machine": machine_info,
        "torch": torch.__version__,
        "device": args.device,
        "runs": runs,
        "summary": summary,
        "verdict": verdict,
      },
      indent=2,
    )
  )
  print(table)
  print(f"\nWritten: {out / 'compare.md'}, {out / 'test_loss.png'}, {out / 'compare.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
