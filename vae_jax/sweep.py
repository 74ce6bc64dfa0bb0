"""Ablation sweeps: a study config names its axes and seeds; one command runs every model.

A study is a Python file whose ``get_config()`` returns a ConfigDict with
- ``name`` and ``question`` (one line each, printed in the tables);
- ``base``: overrides of the reference config for every run (num_epochs, data slices, ...);
- ``axes``: {config key: [values]}: the full grid of settings is run;
- ``seeds``: how many seeds per setting (seeds 1..S);
- ``x_axis`` (optional): the axis plotted along x (default: the first; ConfigDict lists
  axes in alphabetical order).
Keys that keep array shapes (seed, beta, learning_rate, kl_warmup_epochs, binarize) vary
inside one vmapped program (vae_jax.many); the others (latent_dim, hidden_dim, init, ...)
form groups, each compiled once. Outputs in the work directory:
- ``runs/<setting>/seed<k>/metrics.jsonl``: every run's epochs (and ``tensorboard/``
  scalars per epoch and the final reconstruction / sample grids, when tensorboardX is
  installed);
- ``results.csv``: one row per run (axes, seed, final metrics);
- ``summary.md``: final metrics as mean +- std over seeds per setting;
- ``test_loss.png`` (test loss against the first axis) and, when beta is an axis,
  ``rate_distortion.png`` (KL against reconstruction);
- ``groups/<i>.json``: a finished group; a rerun of the same command skips those, and a
  group killed while training resumes from its last epoch (``groups/<i>/checkpoints``).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import checkpoint, images, many, summaries, train
from vae_jax.configs import default

FINAL_METRICS = ("test_loss", "test_bce", "test_kl", "train_loss")


class StudyError(ValueError):
  """A study config cannot be run; the message names the file and key."""


def make_study(name: str, question: str, axes: dict[str, list], seeds: int = 3,
               **base) -> ml_collections.ConfigDict:
  """A study ConfigDict: what a study file's get_config() returns."""
  return ml_collections.ConfigDict({"name": name, "question": question, "axes": axes,
                                    "seeds": seeds, "base": base})


def load_study(path: str | Path) -> ml_collections.ConfigDict:
  """The study's ConfigDict, checked: known axes, non-empty values, seeds >= 1."""
  path = Path(path)
  if not path.is_file():
    raise StudyError(f"study config {path}: not a file")
  spec = importlib.util.spec_from_file_location(f"study_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    study = module.get_config()
  except Exception as e:  # A config file is user code: report what broke, in one line.
    raise StudyError(f"study config {path}: cannot be loaded ({type(e).__name__}: {e})") from None
  return check_study(study, path)


def check_study(study: ml_collections.ConfigDict, path: str | Path) -> ml_collections.ConfigDict:
  """The study, if runnable; StudyError naming the file and the key otherwise."""
  for key in ("name", "axes", "seeds", "base"):
    if key not in study:
      raise StudyError(f"study config {path}: missing key {key!r} (expected name, question, "
                       "base, axes, seeds)")
  known = set(default.get_config())
  for key in (*study.axes, *study.base):
    if key not in known:
      raise StudyError(f"study config {path}: unknown axis or key {key!r}; known config keys: "
                       f"{', '.join(sorted(known))}")
  if "seed" in study.axes:
    raise StudyError(f"study config {path}: 'seed' is not an axis; set seeds (a count)")
  for key, values in study.axes.items():
    if not values:
      raise StudyError(f"study config {path}: axis {key!r} has no values")
  if study.seeds < 1:
    raise StudyError(f"study config {path}: seeds={study.seeds}: expected >= 1")
  return study


def settings(study) -> list[dict[str, Any]]:
  """The grid: one dict {axis: value} per setting, in axis order."""
  names = list(study.axes)
  return [dict(zip(names, values)) for values in itertools.product(*study.axes.values())]


def setting_name(setting: dict[str, Any]) -> str:
  return ",".join(f"{k}={v}" for k, v in setting.items()) or "base"


def groups(study) -> list[tuple[dict[str, Any], list[tuple[dict[str, Any], int]]]]:
  """[(shape-changing values, [(setting, seed), ...])]: each group is one vmapped program."""
  out: dict[str, tuple[dict, list]] = {}
  for setting in settings(study):
    shape = {k: v for k, v in setting.items() if k not in many.HPARAMS}
    entry = out.setdefault(json.dumps(shape, sort_keys=True), (shape, []))
    entry[1].extend((setting, seed) for seed in range(1, study.seeds + 1))
  return list(out.values())


def aggregate(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
  """Per setting: n and mean / std (ddof=1; 0 for one seed) of each final metric."""
  by_setting: dict[tuple, list[dict]] = {}
  for row in rows:
    by_setting.setdefault(tuple(row[a] for a in axes), []).append(row)
  out = []
  for key, members in by_setting.items():
    entry = dict(zip(axes, key), n=len(members))
    for metric in FINAL_METRICS:
      values = np.array([m[metric] for m in members], np.float64)
      entry[f"{metric}_mean"] = float(values.mean())
      entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def markdown(summary: list[dict[str, Any]], axes: list[str], study) -> str:
  lines = [f"### {study.name}", "", study.get("question", ""), "",
           "| " + " | ".join(axes) + " | seeds | test loss | test BCE | test KL | train loss |",
           "| " + " | ".join("---" for _ in axes) + " | ---: | ---: | ---: | ---: | ---: |"]
  for s in summary:
    cells = [f"{s[f'{m}_mean']:.2f} +- {s[f'{m}_std']:.2f}" for m in FINAL_METRICS]
    lines.append("| " + " | ".join(str(s[a]) for a in axes) + f" | {s['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run_study(study: ml_collections.ConfigDict, workdir: str | Path, splits=None,
              log=print) -> list[dict]:
  """Runs every group not finished yet, then writes results.csv, summary.md and the plots.

  ``study``: from load_study (or check_study); ``splits`` replaces the configured data.
  """
  axes = list(study.axes)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = default.get_config()
  base.update(study.base.to_dict())
  base.progress, base.save_images = False, False
  train.validate_config(base)
  splits = splits or train.load_data(base)
  (workdir / "groups").mkdir(exist_ok=True)
  study_groups = groups(study)
  for i, (shape, members) in enumerate(study_groups):
    done = workdir / "groups" / f"{i}.json"
    if done.exists():
      log(f"group {i} ({setting_name(shape)}): done earlier, skipped")
      continue
    config = ml_collections.ConfigDict(base.to_dict())
    config.update(shape)
    train.validate_config(config)
    hparams = {"seed": [seed for _, seed in members]}
    for key in (k for k in axes if k in many.HPARAMS):
      hparams[key] = [setting[key] for setting, _ in members]
    log(f"group {i} ({setting_name(shape)}): {len(members)} models in one program ...")
    group_dir = workdir / "groups" / str(i)  # Per-epoch checkpoints while the group trains.
    states, records = many.train_many(config, hparams, splits, workdir=group_dir)
    x_test_u8 = splits["test"][0][:8]
    grids_fn = jax.jit(jax.vmap(train.epoch_images, in_axes=(0, None, None, 0, None)),
                       static_argnums=(1, 4))
    comparison_K, samples_K = jax.device_get(grids_fn(
        states.params, states.apply_fn, jnp.asarray(x_test_u8.reshape(len(x_test_u8), -1)),
        jax.vmap(jax.random.key)(jnp.asarray(hparams["seed"])), config.latent_dim))
    rows = []
    for k, ((setting, seed), model_records) in enumerate(zip(members, records)):
      run_dir = workdir / "runs" / setting_name(setting) / f"seed{seed}"
      run_dir.mkdir(parents=True, exist_ok=True)
      checkpoint.write_text_atomic(run_dir / "metrics.jsonl",
                                   "".join(json.dumps(r) + "\n" for r in model_records))
      writer = summaries.open_writer(run_dir / "tensorboard")
      summaries.write_records(writer, model_records)
      image_hw = x_test_u8.shape[1:]
      for name, pixels in (("reconstruction", comparison_K[k]), ("sample", samples_K[k])):
        summaries.write_grid(writer, name, images.image_grid(pixels.reshape(-1, *image_hw)),
                             model_records[-1]["epoch"])
      if writer is not None:
        writer.close()
      rows.append({**setting, "seed": seed, **{m: model_records[-1][m] for m in FINAL_METRICS}})
    checkpoint.write_text_atomic(done, json.dumps({"shape": shape, "rows": rows}))
    shutil.rmtree(group_dir)  # Finished: the results are in done; the states are not needed.
  rows = [row for i in range(len(study_groups))
          for row in json.loads((workdir / "groups" / f"{i}.json").read_text())["rows"]]
  write_outputs(workdir, study, axes, rows)
  return rows


def write_outputs(workdir: Path, study, axes: list[str], rows: list[dict]) -> None:
  with open(workdir / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*axes, "seed", *FINAL_METRICS])
    writer.writeheader()
    writer.writerows(rows)
  summary = aggregate(rows, axes)
  (workdir / "summary.md").write_text(markdown(summary, axes, study))
  plot(workdir, summary, axes, study.get("x_axis"))


def plot(workdir: Path, summary: list[dict], axes: list[str], x_axis: str | None = None) -> None:
  """test_loss.png against the first axis (one line per value of the others); rate_distortion.png for beta."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return  # Plots are optional: pip install matplotlib.
  first = x_axis if x_axis in axes else axes[0]
  rest = [a for a in axes if a != first]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  lines: dict[tuple, list[dict]] = {}
  for s in summary:
    lines.setdefault(tuple(s[a] for a in rest), []).append(s)
  for key, members in lines.items():
    xs = [str(m[first]) for m in members]
    ax.errorbar(xs, [m["test_loss_mean"] for m in members], [m["test_loss_std"] for m in members],
                marker="o", capsize=3, label=", ".join(f"{a}={v}" for a, v in zip(rest, key)) or None)
  ax.set_xlabel(first)
  ax.set_ylabel("test loss (nats per example)")
  if rest:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "test_loss.png", dpi=120)
  plt.close(fig)
  if "beta" in axes:
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for s in summary:
      ax.errorbar(s["test_kl_mean"], s["test_bce_mean"], xerr=s["test_kl_std"], yerr=s["test_bce_std"],
                  marker="o", capsize=3)
      ax.annotate(f"beta={s['beta']}", (s["test_kl_mean"], s["test_bce_mean"]), fontsize=7)
    ax.set_xlabel("rate: KL (nats)")
    ax.set_ylabel("distortion: BCE (nats)")
    fig.tight_layout()
    fig.savefig(workdir / "rate_distortion.png", dpi=120)
    plt.close(fig)

