"""Table 1 of Burda, Grosse and Salakhutdinov (2015), the IWAE paper: MNIST test NLL.

Run (the README's table: every cell at stages i = 0..STAGES-1 of the paper's schedule):
  .venv/bin/python -m experiments.burda2015 --stages 3
Two processes on two cores: give each its cells (``--cells 2:iwae:50 2:vae:50``), then run
once more without --cells to write the table (finished cells are reused, not retrained);
``--report`` writes the table from whatever estimates exist (an interim table, training on).

Cells are LAYERS:OBJECTIVE:K (layers 1 or 2, objective vae or iwae, K samples); k = 1 is
trained once (vae_k and iwae with one sample are the same objective: the ELBO) and fills both
columns. Each cell is a resumable run (``<workdir>/<cell>/``) of vae_jax/configs/iwae_<L>layer.py,
trained stage by stage: after stage i (epoch (3**(i+1) - 1) / 2) its test NLL is estimated on
the first --stage-examples test images (``stage<i>_nll_<K>_<N>.json``), and after the last
stage on --test-examples images (0: all 10,000), K = --num-samples (5000) importance samples,
the test set binarized once with key(0). A killed run continues with the same command. ``--keep-in DIR`` (a directory in the repo)
survives a new machine: after each stage the run's stage-end checkpoint, metrics and NLL
estimates are copied to DIR/<cell>/ (replacing the stage before's), and a workdir without
checkpoints starts from what DIR holds, so the same command continues from a fresh clone.
Writes burda2015.md / burda2015.json in the workdir: the paper's NLL beside ours, the gap,
the schedule, wall time and active units per stochastic layer.

``--time`` measures instead what each cell costs here (burda2015_timing.md): the second of
two epochs on the first 6,000 training images, scaled to 60,000, and the full schedule's
3,280 epochs at that rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import cast

import vae_jax
from experiments import common, machine as machine_lib
from vae_jax import checkpoint, data
from vae_jax.configs import iwae_1layer, iwae_2layer

# Burda et al. (2015), Table 1, MNIST test NLL (nats), 3,280 epochs: (layers, objective, k).
PAPER = {
  (1, "vae", 1): 86.76,
  (1, "iwae", 1): 86.76,
  (1, "vae", 5): 86.47,
  (1, "iwae", 5): 85.54,
  (1, "vae", 50): 86.35,
  (1, "iwae", 50): 84.78,
  (2, "vae", 1): 85.33,
  (2, "iwae", 1): 85.33,
  (2, "vae", 5): 85.01,
  (2, "iwae", 5): 83.89,
  (2, "vae", 50): 84.78,
  (2, "iwae", 50): 82.90,
}
RECIPES = {1: iwae_1layer, 2: iwae_2layer}
CELLS = [
  f"{layers}:{objective}:{k}"
  for layers in (1, 2)
  for k in (1, 5, 50)
  for objective in (("vae",) if k == 1 else ("vae", "iwae"))
]


def parse_cell(cell: str) -> tuple[int, str, int]:
  """(layers, objective, k) from 'LAYERS:OBJECTIVE:K'; iwae with k = 1 is the vae cell."""
  parts = cell.split(":")
  if (
    len(parts) != 3
    or parts[0] not in ("1", "2")
    or parts[1] not in ("vae", "iwae")
    or not parts[2].isdigit()
    or int(parts[2]) < 1
  ):
    raise SystemExit(
      f"--cells {cell!r}: expected LAYERS:OBJECTIVE:K, e.g. 2:iwae:50 (layers 1 or "
      "2, objective vae or iwae, K >= 1)"
    )
  layers, objective, k = int(parts[0]), parts[1], int(parts[2])
  return layers, "vae" if k == 1 else objective, k


def stage_end(i: int) -> int:
  """The epoch count at the end of stage i (stages of 3**i epochs)."""
  return (3 ** (i + 1) - 1) // 2


def cell_config(cell: tuple[int, str, int], args):
  """The cell's recipe at args.stages, quiet; args.train_examples: a slice of the train split."""
  layers, objective, k = cell
  config = RECIPES[layers].get_config(f"{objective},{k},{args.stages}")
  config.seed = args.seed
  config.data.train_examples = args.train_examples
  config.run.update(progress=False, tensorboard=False)
  return config


def estimate(run_dir: Path, epoch: int, num_samples: int, examples: int) -> dict:
  """Test NLL of the run's checkpoint at epoch (cached beside the run)."""
  return common.cached_nll(
    run_dir / f"epoch{epoch}_nll_{num_samples}_{examples}.json",
    run_dir,
    num_samples,
    examples,
    which=str(epoch),
  )


def restore_kept(keep_dir: Path, run_dir: Path) -> None:
  """A run directory without checkpoints starts from the one kept in keep_dir (a fresh clone)."""
  kept = keep_dir / run_dir.name
  if (kept / checkpoint.SUBDIR).is_dir() and not checkpoint.has_checkpoints(run_dir):
    print(f"  {run_dir.name}: starting from the checkpoint kept in {kept}", flush=True)
    shutil.copytree(kept, run_dir, dirs_exist_ok=True)


def keep_stage(run_dir: Path, keep_dir: Path, epoch: int) -> None:
  """Copies the checkpoint of epoch (a stage's end), metrics.jsonl, config.json and the NLL
  estimates to keep_dir/<cell>/, replacing what was kept before (written whole, then renamed)."""
  source = run_dir / checkpoint.SUBDIR / str(epoch)
  if not source.is_dir():  # A later epoch's checkpoints replaced it: the kept one stays.
    return
  dest = keep_dir / run_dir.name
  tmp = dest.with_name(dest.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(source, tmp / checkpoint.SUBDIR / str(epoch))
  for path in [
    run_dir / "metrics.jsonl",
    run_dir / "config.json",
    *run_dir.glob("epoch*_nll_*.json"),
  ]:
    if path.exists():
      shutil.copy2(path, tmp / path.name)
  shutil.rmtree(dest, ignore_errors=True)
  tmp.rename(dest)


def run_cell(args, cell, splits, stage: int) -> dict:
  """Trains a cell to the end of stage (resuming) and estimates its NLL there: on the first
  --stage-examples test images after every stage, and on --test-examples after the last."""
  run_dir = args.workdir / cell_name(cell)
  if args.keep_in:
    restore_kept(args.keep_in, run_dir)
  config = cell_config(cell, args)
  config.optim.num_epochs = stage_end(stage)  # Resumable: the schedule follows the step.
  _, records = vae_jax.train(config, run_dir, splits)
  sizes = [args.stage_examples] + ([args.test_examples] if stage == args.stages - 1 else [])
  for examples in dict.fromkeys(sizes):
    out = estimate(run_dir, stage_end(stage), args.num_samples, examples)
    print(
      f"  {cell_name(cell)} stage {stage} (epoch {stage_end(stage)}): test NLL "
      f"{out['test_nll']:.2f} on {out['examples']} images, train "
      f"{sum(r['train_seconds'] for r in records):.0f} s",
      flush=True,
    )
  if args.keep_in:
    keep_stage(run_dir, args.keep_in, stage_end(stage))
  return out


def cell_name(cell) -> str:
  layers, objective, k = cell
  return f"{layers}layer_{objective}_k{k}"


def collect(args, cells) -> dict:
  """Every cell's results found in the workdir: stage estimates, final, wall time."""
  out = {}
  for cell in cells:
    run_dir = args.workdir / cell_name(cell)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
      continue
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    found = {}
    for i, examples in [
      *((i, args.stage_examples) for i in range(args.stages)),
      ("final", args.test_examples),
    ]:
      epoch = stage_end(args.stages - 1 if i == "final" else cast(int, i))
      path = run_dir / f"epoch{epoch}_nll_{args.num_samples}_{examples}.json"
      if path.exists():
        found[i] = json.loads(path.read_text())
    out[cell] = {
      "records": records,
      "stages": found,
      "train_seconds": sum(r["train_seconds"] for r in records),
    }
  return out


def report(args, found: dict) -> None:
  last = args.stages - 1
  rows, results = [], {"stages": args.stages, "epochs": stage_end(last), "cells": {}}
  for layers in (1, 2):
    for k in (1, 5, 50):
      row: list[int | str] = [layers, k]
      for objective in ("vae", "iwae"):
        cell = (layers, "vae" if k == 1 else objective, k)
        final = found.get(cell, {}).get("stages", {}).get("final")
        paper = PAPER[(layers, objective, k)]
        if final is None:
          row += [f"{paper:.2f}", "not run", "", ""]
          continue
        units = "+".join(map(str, final["active_units_per_layer"]))
        row += [
          f"{paper:.2f}",
          f"{final['test_nll']:.2f}",
          f"{final['test_nll'] - paper:+.2f}",
          units,
        ]
        results["cells"][f"{layers}:{objective}:{k}"] = {
          "paper": paper,
          "ours": final["test_nll"],
          "gap": final["test_nll"] - paper,
          "active_units_per_layer": final["active_units_per_layer"],
          "test_examples": final["examples"],
          "num_samples": final["num_samples"],
          "train_seconds": found[cell]["train_seconds"],
          "eval_seconds": final["seconds"],
          "neg_elbo": final["test_neg_elbo"],
          "stage_nll": {
            stage_end(i): s["test_nll"] for i, s in found[cell]["stages"].items() if i != "final"
          },
        }
      rows.append(row)
  table = common.markdown_table(
    [
      "layers",
      "k",
      "VAE paper",
      "VAE ours",
      "VAE gap",
      "VAE active",
      "IWAE paper",
      "IWAE ours",
      "IWAE gap",
      "IWAE active",
    ],
    rows,
  )
  stage_rows = []
  for cell, entry in sorted(found.items()):
    stage_rows.append(
      [
        cell_name(cell),
        *(
          f"{entry['stages'][i]['test_nll']:.2f}" if i in entry["stages"] else ""
          for i in range(args.stages)
        ),
        f"{entry['train_seconds'] / 60:.0f}",
      ]
    )
  stages = (
    common.markdown_table(
      ["cell", *(f"stage {i}: epoch {stage_end(i)}" for i in range(args.stages)), "train minutes"],
      stage_rows,
    )
    if stage_rows
    else ""
  )
  text = (
    f"Schedule: stages i = 0..{last} of the paper's (3^i epochs at 1e-3 * 10^(-i/7)): "
    f"{stage_end(last)} epochs of the paper's 3,280. NLL: K = {args.num_samples} importance "
    f"samples, test set binarized once with key(0), on {args.test_examples or 10000} test "
    f"images. Gap = ours - paper (nats). Active units: h1+h2.\n\n{table}\n\n"
    f"Test NLL after each stage on the first {args.stage_examples or 10000} test images "
    f"(K = {args.num_samples}), and training time:\n\n{stages}"
  )
  common.write_report(
    args.workdir, "burda2015", "Burda et al. (2015), Table 1: MNIST test NLL", text, results
  )


def time_cells(args, cells, splits) -> None:
  """Seconds per 60,000-image epoch of each cell (one process, this machine) and the cost of
  the full schedule."""
  slice_n = 6000
  part = {
    "train": tuple(a[:slice_n] for a in splits["train"]),
    "test": tuple(a[:100] for a in splits["test"]),
  }
  rows, results = [], {}
  for cell in cells:
    config = cell_config(cell, args)
    config.optim.num_epochs = 2
    with tempfile.TemporaryDirectory() as tmp:
      _, records = vae_jax.train(config, tmp, part)
    per_epoch = records[1]["train_seconds"] * len(splits["train"][0]) / slice_n
    results[cell_name(cell)] = {
      "seconds_per_epoch": per_epoch,
      "full_hours": per_epoch * 3280 / 3600,
      "hours_at_stages": per_epoch * stage_end(args.stages - 1) / 3600,
    }
    rows.append(
      [
        cell_name(cell),
        f"{per_epoch:.1f}",
        f"{per_epoch * stage_end(args.stages - 1) / 3600:.2f}",
        f"{per_epoch * 3280 / 3600:.1f}",
      ]
    )
    print(f"  {cell_name(cell)}: {per_epoch:.1f} s/epoch", flush=True)
  table = common.markdown_table(
    ["cell", "s / epoch", f"hours, {stage_end(args.stages - 1)} epochs", "hours, 3,280 epochs"],
    rows,
  )
  common.write_report(
    args.workdir,
    "burda2015_timing",
    "Burda et al. (2015) cells: cost per epoch",
    f"One process, the machine's default threads; epoch 2 of 2 on {slice_n:,} "
    f"images, scaled to 60,000.\n\n{table}",
    results,
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
  parser.add_argument("--workdir", type=Path, default=Path("runs/burda2015"))
  parser.add_argument(
    "--stages", type=int, default=8, help="learning-rate stages (8: 3,280 epochs)"
  )
  parser.add_argument(
    "--cells", nargs="+", default=CELLS, help="LAYERS:OBJECTIVE:K ... (default all)"
  )
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--num-samples", type=int, default=5000)
  parser.add_argument(
    "--test-examples", type=int, default=0, help="final NLL's test images (0: all)"
  )
  parser.add_argument(
    "--stage-examples", type=int, default=1000, help="earlier stages' test images"
  )
  parser.add_argument("--train-examples", type=int, default=0, help="0: the whole training split")
  parser.add_argument(
    "--keep-in",
    type=Path,
    default=None,
    help="keep each stage's checkpoint here (in the repo), start from it on a new machine",
  )
  parser.add_argument("--time", action="store_true", help="measure s/epoch of each cell instead")
  parser.add_argument(
    "--report",
    action="store_true",
    help="write the table from the estimates already made; train nothing",
  )
  args = parser.parse_args()
  if args.stages < 1:
    raise SystemExit(f"--stages {args.stages}: expected >= 1")
  cells = list(dict.fromkeys(parse_cell(c) for c in args.cells))
  args.workdir.mkdir(parents=True, exist_ok=True)
  if args.report:
    report(args, collect(args, [parse_cell(c) for c in CELLS]))
    return 0
  print(f"Machine: {machine_lib.machine_line()}", flush=True)
  splits = data.load_data(cell_config(cells[0], args))
  if args.time:
    time_cells(args, cells, splits)
    return 0
  for stage in range(args.stages):  # Stage by stage: an interrupted table has every cell's stage.
    for cell in cells:
      run_cell(args, cell, splits, stage)
  report(args, collect(args, [parse_cell(c) for c in CELLS]))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
