"""What the application experiments (likelihood, compression, denoising, anomaly,
generation) share: a config with overrides, a resumable training run, tables, the machine."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from vae_jax import train


def parser(doc: str, name: str, epochs: int) -> argparse.ArgumentParser:
  """The flags every application script has: --workdir (runs/<name>), --epochs, --seed (1)."""
  parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
  parser.add_argument("--workdir", type=Path, default=Path("runs") / name)
  parser.add_argument("--epochs", type=int, default=epochs, help="training epochs per model")
  parser.add_argument("--seed", type=int, default=1)
  return parser


def prepare(args):
  """Creates args.workdir and returns the MNIST splits every script starts from."""
  args.workdir.mkdir(parents=True, exist_ok=True)
  return train.load_data(config_with())


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path: Path, dpi: int = 100, **adjust) -> None:
  """Lays out, writes and closes fig; ``adjust``: fig.subplots_adjust arguments after layout."""
  fig.tight_layout()
  if adjust:
    fig.subplots_adjust(**adjust)
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)


def config_with(**overrides) -> ml_collections.ConfigDict:
  """The reference config, quiet (no progress bar, images or TensorBoard), with overrides."""
  config = train.default_config()
  config.run.progress, config.run.save_images, config.run.tensorboard = False, False, False
  config.update(overrides)
  return config


def train_model(workdir: Path, splits, **overrides):
  """Trains (or resumes, or just loads) a run in workdir: (config, state, records).

  A finished run is restored from its checkpoint, so rerunning an experiment retrains nothing.
  """
  config = config_with(**overrides)
  start = time.perf_counter()
  state, records = train.train_and_evaluate(config, workdir, splits)
  seconds = time.perf_counter() - start
  print(f"  {workdir.name}: {config.optim.num_epochs} epochs, test loss {records[-1]['test_loss']:.2f} "
        f"({seconds:.0f} s)", flush=True)
  return config, state, records


def flat_pixels(splits) -> tuple[np.ndarray, np.ndarray]:
  """(x_train_NxD, x_test_NxD): the splits' images flattened, pixels / 255 as float64."""
  return tuple(splits[s][0].reshape(len(splits[s][0]), -1) / 255.0 for s in ("train", "test"))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A markdown table; floats as given (format them first), numbers right-aligned."""
  align = ["---:" if isinstance(v, (int, float, np.number)) or _numeric(v) else "---"
           for v in rows[0]]
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
  lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def _numeric(value) -> bool:
  try:
    float(str(value).replace(",", "").replace("%", "").split(" ")[0])
    return True
  except ValueError:
    return False


def machine() -> str:
  """One line: CPU model, cores, jax version and backend (benchmark.describe_machine)."""
  import benchmark  # A script beside this one: the machine description lives there.
  info = benchmark.describe_machine()
  return f"{info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']})"


def write_report(workdir: Path, name: str, title: str, text: str, results: dict) -> None:
  """workdir/<name>.md (title, machine, text) and workdir/<name>.json (results); prints the text."""
  report = f"# {title}\n\nMachine: {machine()}.\n\n{text}\n"
  (workdir / f"{name}.md").write_text(report)
  (workdir / f"{name}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
  print("\n" + report)
