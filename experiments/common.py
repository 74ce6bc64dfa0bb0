"""What the application experiments (likelihood, dimensionality, denoising, anomaly,
generation) share: a config with overrides, a resumable training run, tables, the machine."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

import vae_jax
from experiments import machine as machine_lib
from vae_jax import api, config as config_lib, evaluate

# The data section every run of this process trains on (set by prepare from --dataset).
DATA: dict[str, Any] = {}


def parser(doc: str, name: str, epochs: int) -> argparse.ArgumentParser:
  """The flags every application script has: --workdir (runs/<name>, runs/<name>_<dataset>
  for another dataset), --epochs, --seed (1), --dataset (mnist)."""
  parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
  parser.add_argument("--workdir", type=Path, default=None, help=f"default runs/{name}[_DATASET]")
  parser.add_argument("--epochs", type=int, default=epochs, help="training epochs per model")
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument(
    "--dataset",
    default="mnist",
    help="config.data.name: mnist, fashion_mnist (bundled or system copy)",
  )
  parser.add_argument("--data-source", default="bundled", help="config.data.source")
  parser.add_argument("--data-dir", default="", help="config.data.dir (idx, tfds)")
  parser.set_defaults(name=name)
  return parser


def prepare(args):
  """Creates args.workdir and returns the splits of args.dataset every script starts from;
  every run of this process then trains on that data section."""
  DATA.clear()
  DATA.update(
    {"data.name": args.dataset, "data.source": args.data_source, "data.dir": args.data_dir}
  )
  if args.workdir is None:
    suffix = "" if args.dataset == "mnist" else f"_{args.dataset}"
    args.workdir = Path("runs") / f"{args.name}{suffix}"
  args.workdir.mkdir(parents=True, exist_ok=True)
  return vae_jax.load_data(config_with({}))


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


def config_with(overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """The reference config, quiet (no progress bar, images or TensorBoard), with dotted overrides."""
  return config_lib.from_flat(
    {"run.progress": False, "run.save_images": False, "run.tensorboard": False, **DATA, **overrides}
  )


def train_model(workdir: Path, splits, overrides: dict[str, Any]):
  """Trains (or resumes, or just loads) a run in workdir: (config, state, records).

  A finished run is restored from its checkpoint, so rerunning an experiment retrains nothing.
  """
  config = config_with(overrides)
  start = time.perf_counter()
  state, records = vae_jax.train(config, workdir, splits)
  seconds = time.perf_counter() - start
  print(
    f"  {workdir.name}: {config.optim.num_epochs} epochs, test loss {records[-1]['test_loss']:.2f} "
    f"({seconds:.0f} s)",
    flush=True,
  )
  return config, state, records


def cached_nll(
  cache: Path, run_dir: Path, num_samples: int, examples: int, which: str = "latest"
) -> dict:
  """evaluate.evaluate_run's K-sample test NLL of a checkpoint, with its seconds; read from
  cache when an earlier run wrote it (written whole, by a rename)."""
  if cache.exists():
    return json.loads(cache.read_text())
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = evaluate.evaluate_run(
      run_dir, which=which, num_samples=num_samples, num_examples=examples
    )
  out["seconds"] = time.perf_counter() - start
  tmp = cache.with_suffix(".tmp")
  tmp.write_text(json.dumps(out, indent=1) + "\n")
  tmp.replace(cache)
  return out


def flat_pixels(splits) -> tuple[np.ndarray, np.ndarray]:
  """(x_train_NxD, x_test_NxD): the splits' images flattened, pixels / 255 as float64."""
  return tuple(splits[s][0].reshape(len(splits[s][0]), -1) / 255.0 for s in ("train", "test"))


def as_images(state, x_NxD) -> np.ndarray:
  """Flat pixels (N x D) in the shape of the state's model (N x H x W x C)."""
  return np.reshape(x_NxD, (len(x_NxD), *api.model_of(state).image_shape))


def encode(state, x_NxD) -> tuple[np.ndarray, np.ndarray]:
  """(mu_NxL, logvar_NxL) of flat pixels, through the model's image shape."""
  return evaluate.encode_all(state.params, state.apply_fn, as_images(state, x_NxD))


def decode(state, z_NxL) -> np.ndarray:
  """Mean images of codes, flat (N x D) as the experiments compare them."""
  out = evaluate.decode_all(state.params, state.apply_fn, z_NxL)
  return out.reshape(len(out), -1)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A markdown table; floats as given (format them first), numbers right-aligned."""
  align = [
    "---:" if isinstance(v, (int, float, np.number)) or _numeric(v) else "---" for v in rows[0]
  ]
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
  lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def _numeric(value) -> bool:
  try:
    float(str(value).replace(",", "").replace("%", "").split(" ")[0])
    return True
  except ValueError:
    return False


def write_report(workdir: Path, name: str, title: str, text: str, results: dict) -> None:
  """workdir/<name>.md (title, machine, text) and workdir/<name>.json (results); prints the text."""
  report = f"# {title}\n\nMachine: {machine_lib.machine_line()}.\n\n{text}\n"
  (workdir / f"{name}.md").write_text(report)
  (workdir / f"{name}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
  print("\n" + report)
