"""Kingma et al. (2014), Table 1: semi-supervised MNIST with 100, 600, 1,000 and 3,000 labels.

Run (resumable: the same command continues after a kill, and skips what finished):
  .venv/bin/python -m experiments.semisupervised --workdir runs/semisupervised
  .venv/bin/python -m experiments.semisupervised --labels 100 --epochs 2 --m1-epochs 2 \\
      --m2-epochs 0 --workdir runs/kingma2014_quick        # a quick look

1. M1, the feature extractor (vae_jax/configs/kingma2014.py:m1; --m1-epochs).
2. For each label count L in --labels: M1+M2 (kingma2014.py:m1m2,L/10) on M1's posterior (its
   active units; a fresh z1 at every step), three label draws (seeds 1-3: each keeps its own
   L/10 labels per class) trained as one program (a study of seeds alone, vae_jax.sweep),
   --epochs epochs (a study that finished is skipped: it keeps the epochs it was run with).
3. M2 alone on the images (kingma2014.py:m2,10) with 100 labels, --m2-epochs (0: skipped).
The error is that of q(y|x) on the 10,000 test images, after the last epoch (no validation
set picks an epoch). Outputs in --workdir: semisupervised.md / .json (a row for every study
the workdir holds, beside the paper's; the protocol, wall times) and semisupervised.png (test
error against epoch, every run); the runs in m1/, m1m2_<L>/ and m2_100/ (sweep directories).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

import vae_jax
from experiments import common
from vae_jax import config as config_lib, sweep
from vae_jax.configs import kingma2014

# Kingma et al. (2014), Table 1: MNIST test error (%), mean (+- sd over label draws) by labels.
PAPER = {
  "M2": {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)},
  "M1+M2": {100: (3.33, 0.14), 600: (2.59, 0.05), 1000: (2.40, 0.02), 3000: (2.18, 0.04)},
}


def quiet(config) -> dict:
  """A recipe's dotted keys, quiet (no progress bar, images or TensorBoard)."""
  flat = config_lib.flatten(config.to_dict())
  return {**flat, "run.progress": False, "run.save_images": False, "run.tensorboard": False}


def seeds_study(workdir: Path, name: str, base: dict, seeds: int) -> list[dict]:
  """The seeds of one setting as one program (a study of seeds alone): its rows."""
  study = sweep.make_study(name, f"{name}: {seeds} label draws", {}, seeds, base)
  rows = sweep.run_study(sweep.check_study(study, name), workdir, log=print)
  errors = [100 * r["test_class_error"] for r in rows]
  print(f"{name}: test error {np.mean(errors):.2f} +- {np.std(errors, ddof=1):.2f} %", flush=True)
  return rows


def records_of(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def trajectories(workdir: Path) -> dict[str, list[float]]:
  """Each run's test error (%) by epoch, from its metrics.jsonl."""
  return {
    path.parent.name: [100 * r["test_class_error"] for r in records_of(path)]
    for path in sorted(workdir.glob("runs/*/seed*/metrics.jsonl"))
  }


def train_hours(workdir: Path) -> float:
  """The study's training time (its program's epochs, summed; every seed records the same)."""
  path = next(iter(sorted(workdir.glob("runs/*/seed*/metrics.jsonl"))))
  return sum(r["train_seconds"] for r in records_of(path)) / 3600


def finished_studies(workdir: Path) -> dict[str, dict]:
  """Every finished study of the workdir (m1m2_<labels>/, then m2_<labels>/), by row name: its
  rows (results.csv) and trajectories, whichever invocation trained it."""
  found = []
  for study in workdir.glob("m*_*/results.csv"):
    kind, _, digits = study.parent.name.partition("_")
    if kind in ("m1m2", "m2") and digits.isdigit():
      found.append((kind != "m1m2", int(digits), kind, study))
  out = {}
  for _, count, kind, study in sorted(found):
    with open(study) as f:
      rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    name = f"{'M1+M2' if kind == 'm1m2' else 'M2'} {count}"
    out[name] = {
      "labels": count,
      "rows": rows,
      "trajectories": trajectories(study.parent),
      "train_hours": train_hours(study.parent),
    }
  return out


def main() -> int:
  parser = common.parser(__doc__, "semisupervised", epochs=300)
  parser.add_argument("--labels", default="100,600,1000,3000", help="label counts (10 classes)")
  parser.add_argument("--seeds", type=int, default=3, help="label draws per count")
  parser.add_argument("--m1-epochs", type=int, default=500)
  parser.add_argument("--m2-epochs", type=int, default=100, help="M2 on images, 100 labels; 0: off")
  args = parser.parse_args()
  args.workdir = args.workdir or Path("runs/semisupervised")
  args.workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  m1 = kingma2014.get_config(f"m1,0,{args.m1_epochs}")
  m1_dir = args.workdir / "m1"
  _, m1_records = vae_jax.train(config_lib.from_flat(quiet(m1)), m1_dir)
  print(f"M1: {len(m1_records)} epochs, test loss {m1_records[-1]['test_loss']:.2f}", flush=True)
  for labels in [int(n) for n in args.labels.split(",")]:
    base = {
      **quiet(kingma2014.get_config(f"m1m2,{labels // 10},{args.epochs}")),
      "data.dir": str(m1_dir),
    }
    seeds_study(args.workdir / f"m1m2_{labels}", f"m1m2_{labels}", base, args.seeds)
  if args.m2_epochs:
    base = quiet(kingma2014.get_config(f"m2,10,{args.m2_epochs}"))
    seeds_study(args.workdir / "m2_100", "m2_100", base, args.seeds)
  seconds = time.perf_counter() - start
  m1_hours = sum(r["train_seconds"] for r in m1_records) / 3600
  runs = finished_studies(args.workdir)
  table = []
  for name, run in runs.items():
    model, count = name.rsplit(" ", 1)
    errors = [100 * r["test_class_error"] for r in run["rows"]]
    paper = PAPER[model][int(count)]
    epochs = len(next(iter(run["trajectories"].values())))
    table.append(
      [
        model,
        count,
        f"{np.mean(errors):.2f} +- {np.std(errors, ddof=1):.2f}",
        ", ".join(f"{e:.2f}" for e in errors),
        f"{paper[0]:.2f} +- {paper[1]:.2f}",
        f"{np.mean(errors) - paper[0]:+.2f}",
        epochs,
        f"{run['train_hours']:.2f}",
      ]
    )
  header = ["model", "labels", "ours (%)", "each draw", "Kingma et al. (%)", "gap", "epochs"]
  header += ["training (h, all draws)"]
  text = (
    f"M1: {len(m1_records)} epochs, {m1_hours:.2f} h of training (test ELBO loss "
    f"{m1_records[-1]['test_loss']:.2f} nats on gray test images). Test error of q(y|x), mean +- sd over {args.seeds} label draws, each "
    f"draw a seed of one program. Wall time of this command: {seconds:.0f} s.\n\n"
    + common.markdown_table(header, table)
  )
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, run in runs.items():
    for k, curve in enumerate(run["trajectories"].values()):
      ax.plot(
        np.arange(1, len(curve) + 1),
        curve,
        color=f"C{list(runs).index(name)}",
        lw=1,
        label=name if k == 0 else None,
      )
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("test error of q(y|x) (%)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  common.save_figure(fig, args.workdir / "semisupervised.png")
  common.write_report(
    args.workdir,
    "semisupervised",
    "Semi-supervised MNIST: Kingma et al. (2014), Table 1",
    text,
    {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "seconds": seconds},
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
