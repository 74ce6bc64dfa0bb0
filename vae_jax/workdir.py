"""A run's directory: created and checked before anything is written; its log and table."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from vae_jax import checkpoint

# Record keys that are not per-example metrics: kept out of tables and plots' metric lists.
BOOKKEEPING = ("epoch", "train_examples", "steps", "train_seconds", "compile_seconds")


class WorkdirError(ValueError):
  """The work directory cannot be used; nothing in it was changed."""


def prepare_workdir(workdir: str | Path, restart: bool = False) -> Path:
  """Creates the work directory and checks it is writable.

  A directory holding a run with checkpoints is resumed; one holding a run without
  checkpoints is refused. ``restart`` moves an earlier run into ``replaced_<time>/``
  inside the directory first: nothing is deleted.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir}: exists and is not a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror})") from None
  if restart:
    move_run_aside(workdir)
  elif (workdir / "metrics.jsonl").exists() and not checkpoint.has_checkpoints(workdir):
    raise WorkdirError(f"workdir {workdir}: holds a run (metrics.jsonl) with no checkpoint to "
                       "resume from; choose a new --workdir, or pass --config.run.restart=True to "
                       "move that run aside and start afresh")
  return workdir


def move_run_aside(workdir: Path) -> Path | None:
  """Moves an earlier run's files into workdir/replaced_<UTC time>/; returns it (None: no run)."""
  pattern = re.compile(r"(reconstruction|sample)_\d+\.png")
  names = [p for p in sorted(workdir.iterdir())
           if p.name in ("metrics.jsonl", "config.json", "tensorboard", checkpoint.SUBDIR)
           or pattern.fullmatch(p.name)]
  if not names:
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  dest = workdir / f"replaced_{stamp}"
  suffix = 1
  while dest.exists():
    dest, suffix = workdir / f"replaced_{stamp}_{suffix}", suffix + 1
  dest.mkdir()
  for path in names:
    path.rename(dest / path.name)
  print(f"restart: moved the earlier run to {dest}")
  return dest


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> None:
  """metrics.jsonl, one JSON record per epoch, rewritten whole and atomically."""
  checkpoint.write_text_atomic(Path(workdir) / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in records))


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
  """The per-example metrics of the records (train_*, test_*), in their order."""
  return [k for k in records[0] if k not in BOOKKEEPING] if records else []


def format_table(records: list[dict[str, Any]]) -> str:
  """Per-epoch metrics (nats per example) and times as a markdown table, columns from the records."""
  keys = metric_keys(records)
  lines = ["| epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " | train s | compile s |",
           "| ---: |" + " ---: |" * (len(keys) + 2)]
  for r in records:
    lines.append(f"| {r['epoch']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) +
                 f" | {r['train_seconds']:.3f} | {r['compile_seconds']:.2f} |")
  return "\n".join(lines)
