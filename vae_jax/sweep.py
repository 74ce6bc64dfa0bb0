"""Ablation sweeps: a study config names its axes and seeds; one command runs every model.

A study is a Python file whose ``get_config()`` returns a ConfigDict (``make_study``) with
- ``name`` and ``question`` (one line each, printed in the tables);
- ``base``: {dotted config key: value} for every run (``optim.num_epochs``, data slices, ...);
- ``axes``: {dotted config key: [values]}: the full grid of settings is run;
- ``seeds``: how many seeds per setting (seeds 1..S);
- ``x_axis`` (optional): the axis plotted along x (default: the first).
A model or objective of your own: name its module in ``base['plugins']`` (or pass
``--plugin=MODULE``); every run records it.
Settings that are traced (``group.batched_settings``: the seed, the learning rate, the
objective's numeric settings) vary inside one compiled program; the others form groups,
each compiled once. Every group trains through ``training.train_models``, as a single run does.
Outputs in the work directory:
- ``runs/<setting>/seed<k>/``: every run's metrics.jsonl (and TensorBoard scalars);
- ``results.csv``: one row per run (axes, seed, every final metric of the objective);
- ``summary.md``: final metrics as mean +- std over seeds per setting;
- ``test_loss.png`` (test loss against the first axis) and, when ``objective.beta`` is an
  axis, ``rate_distortion.png`` (KL against reconstruction);
- ``groups/<hash>.json``: a finished group, named by the hash of its full settings; a rerun
  skips those, and a group killed while training resumes from ``groups/<hash>/checkpoints``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from vae_jax import (
  checkpoint,
  config as config_lib,
  data,
  group as group_lib,
  objectives,
  plugins,
  training,
  workdir as workdir_lib,
)
from vae_jax.data import Splits
from vae_jax.group import batched_settings


class StudyError(ValueError):
  """A study config cannot be run; the message names the file and key."""


def make_study(
  name: str,
  question: str,
  axes: dict[str, list],
  seeds: int = 3,
  base: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """A study ConfigDict: what a study file's get_config() returns (dotted config keys)."""
  return ml_collections.ConfigDict(
    {
      "name": name,
      "question": question,
      "axes": dict(axes),
      "seeds": seeds,
      "base": dict(base or {}),
    },
    allow_dotted_keys=True,
  )


def load_study(path: str | Path) -> ml_collections.ConfigDict:
  """The study's ConfigDict, checked: known axes, non-empty values, seeds >= 1."""
  path = Path(path)
  if not path.is_file():
    raise StudyError(f"study config {path}: not a file")
  spec = importlib.util.spec_from_file_location(f"study_{path.stem}", path)
  if spec is None or spec.loader is None:  # Not a name Python loads code from (no .py).
    raise StudyError(f"study config {path}: cannot be loaded (not a Python file)")
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
      raise StudyError(
        f"study config {path}: missing key {key!r} (expected name, question, base, axes, seeds)"
      )
  try:
    plugins.load(study.base.get("plugins", ()), f"study config {path}: base plugins")
  except config_lib.ConfigError as e:
    raise StudyError(str(e)) from None
  known = set(config_lib.known_keys())
  for key in (*study.axes, *study.base):
    if key not in known:
      raise StudyError(
        f"study config {path}: unknown axis or key {key!r}; known config keys: "
        f"{', '.join(sorted(known))}"
      )
  if "seed" in study.axes:
    raise StudyError(f"study config {path}: 'seed' is not an axis; set seeds (a count)")
  for key, values in study.axes.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise StudyError(f"study config {path}: axis {key!r}: expected a non-empty list of values")
  if not isinstance(study.seeds, int) or study.seeds < 1:
    raise StudyError(f"study config {path}: seeds={study.seeds}: expected an integer >= 1")
  for setting in settings(study):  # Every config of the grid is checked before any trains.
    try:
      config_lib.parse(setting_config(study, setting))
    except config_lib.ConfigError as e:
      raise StudyError(f"study config {path}: setting {setting_name(setting)}: {e}") from None
  return study


def settings(study) -> list[dict[str, Any]]:
  """The grid: one dict {axis: value} per setting, in axis order."""
  names = list(study.axes)
  return [dict(zip(names, values)) for values in itertools.product(*study.axes.values())]


def setting_name(setting: dict[str, Any]) -> str:
  return ",".join(f"{k}={v}" for k, v in setting.items()) or "base"


def setting_config(study, setting: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config of one setting: defaults, the study's base, the setting; no progress bar."""
  return config_lib.from_flat({"run.progress": False, **study.base.to_dict(), **setting})


def groups(study) -> list[tuple[dict[str, Any], list[tuple[dict[str, Any], int]]]]:
  """[(settings that shape the program, [(setting, seed), ...])]: each group is one program."""
  out: dict[str, tuple[dict, list]] = {}
  for setting in settings(study):
    objective = objectives.REGISTRY.get(setting_config(study, setting).objective.name).target
    shape = {k: v for k, v in setting.items() if k not in batched_settings(objective)}
    entry = out.setdefault(json.dumps(shape, sort_keys=True), (shape, []))
    entry[1].extend((setting, seed) for seed in range(1, study.seeds + 1))
  return list(out.values())


def group_hash(study, shape: dict[str, Any], members) -> str:
  """A name for a group from everything that decides its numbers (not its position)."""
  config = {
    k: v
    for k, v in config_lib.with_kernels(config_lib.effective(setting_config(study, shape))).items()
    if k not in config_lib.RESUMABLE  # What does not change the numbers does not count,
    and not (k in config_lib.ADDED and v == config_lib.ADDED[k])
  }  # nor a later key's old value.
  spec = {"config": config, "models": [[setting, seed] for setting, seed in members]}
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def final_metrics(rows: list[dict[str, Any]]) -> list[str]:
  """The metric columns of the rows (test_* then train_*), in first-seen order."""
  keys = [k for row in rows for k in row if k.startswith(("test_", "train_"))]
  keys = list(dict.fromkeys(keys))
  return [k for k in keys if k.startswith("test_")] + [k for k in keys if k.startswith("train_")]


def aggregate(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
  """Per setting: n and mean / std (ddof=1; 0 for one seed) of each final metric."""
  by_setting: dict[tuple, list[dict]] = {}
  for row in rows:
    by_setting.setdefault(tuple(row[a] for a in axes), []).append(row)
  out = []
  for key, members in by_setting.items():
    entry = dict(zip(axes, key), n=len(members))
    for metric in final_metrics(members):
      values = np.array([m[metric] for m in members if metric in m], np.float64)
      entry[f"{metric}_mean"] = float(values.mean())
      entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def markdown(summary: list[dict[str, Any]], axes: list[str], study, metrics: list[str]) -> str:
  lines = [
    f"### {study.name}",
    "",
    study.get("question", ""),
    "",
    "| "
    + " | ".join(axes)
    + " | seeds | "
    + " | ".join(m.replace("_", " ") for m in metrics)
    + " |",
    "| " + " | ".join("---" for _ in axes) + " | ---:" + " | ---:" * len(metrics) + " |",
  ]
  for s in summary:
    cells = [
      f"{s[f'{m}_mean']:.2f} +- {s[f'{m}_std']:.2f}" if f"{m}_mean" in s else "" for m in metrics
    ]
    lines.append(
      "| " + " | ".join(str(s[a]) for a in axes) + f" | {s['n']} | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines) + "\n"


def run_study(
  study: ml_collections.ConfigDict,
  workdir: epath.PathLike,
  splits: Splits | None = None,
  log: Callable[[str], None] = print,
) -> list[dict]:
  """Runs every group not finished yet, then writes results.csv, summary.md and the plots.

  ``study``: from load_study (or check_study); ``splits`` replaces the configured data.
  """
  axes = list(study.axes)
  workdir = workdir_lib.check_directory(workdir, "sweep workdir")
  study_groups = groups(study)
  splits = splits or data.load_data(setting_config(study, {}))
  for shape, members in study_groups:  # Every check that needs the data, before any write.
    try:
      group_lib.make_group(
        setting_config(study, shape), splits, group_overrides(study, shape, members)
      )
    except config_lib.ConfigError as e:
      raise StudyError(f"study {study.name!r}: setting {setting_name(shape)}: {e}") from None
  with workdir_lib.locked(workdir, "sweep workdir"):  # One sweep writes a directory at a time.
    check_outputs(study, workdir, study_groups)
    (workdir / "groups").mkdir(exist_ok=True)
    rows = []
    for i, (shape, members) in enumerate(study_groups):
      rows += run_group(study, workdir, i, shape, members, splits, log)
    write_outputs(workdir, study, axes, rows)
  return rows


def group_overrides(study, shape: dict, members: list) -> list[dict[str, Any]]:
  """Each member's per-model settings: its seed and the axes traced inside the group's program."""
  batched = [k for k in study.axes if k not in shape]
  return [{"seed": seed, **{k: setting[k] for k in batched}} for setting, seed in members]


def run_directories(workdir: Path, members: list) -> list[Path]:
  return [workdir / "runs" / setting_name(setting) / f"seed{seed}" for setting, seed in members]


# What a sweep writes at the top of its directory; the directory is a sweep's when it holds
# groups/ (a regular directory): only then are these replaced.
SWEEP_OUTPUTS = {
  "results.csv": "file",
  "summary.md": "file",
  "test_loss.png": "file",
  "rate_distortion.png": "file",
  "groups": "directory",
  "runs": "directory",
}


def check_outputs(study, workdir: Path, study_groups) -> None:
  """Refuses (WorkdirError, nothing written) anything in the way of the sweep's outputs: in its
  directory, on the way to each run directory and in each (workdir.check_outputs' rule)."""
  groups_dir = workdir / "groups"
  workdir_lib.check_outputs(
    workdir,
    SWEEP_OUTPUTS.get,
    groups_dir.is_dir() and not workdir_lib.is_link(groups_dir),
    "sweep workdir",
    "this directory is not a sweep's (no groups/ of one)",
  )
  for shape, members in study_groups:
    run = config_lib.parse(setting_config(study, shape))
    output = lambda name: workdir_lib.run_output(
      name, run.optim.num_epochs, run.run.save_images, run.run.tensorboard
    )
    for run_dir in run_directories(workdir, members):
      for parent in (run_dir.parent, run_dir):  # runs/<setting>/ and runs/<setting>/seed<k>/
        if workdir_lib.is_link(parent) or parent.exists() and not parent.is_dir():
          raise workdir_lib.WorkdirError(
            f"sweep workdir {workdir}: {parent.relative_to(workdir)} is not a directory (a sweep "
            "writes one there); move it away, or choose another --workdir"
          )
      workdir_lib.check_outputs(run_dir, output, workdir_lib.is_run(run_dir), "sweep run")


def run_group(study, workdir: Path, i: int, shape: dict, members: list, splits, log) -> list[dict]:
  """One group's rows: read from groups/<hash>.json when it finished earlier, else trained."""
  name = group_hash(study, shape, members)
  done = workdir / "groups" / f"{name}.json"
  if done.exists():
    log(f"group {i} ({setting_name(shape)}): done earlier ({done.name}), skipped")
    return json.loads(done.read_text())["rows"]
  config = setting_config(study, shape)
  overrides = group_overrides(study, shape, members)
  run_dirs = run_directories(workdir, members)
  for run_dir in run_dirs:
    run_dir.mkdir(parents=True, exist_ok=True)
  log(f"group {i} ({setting_name(shape)}): {len(members)} models in one program ...")
  group_dir = workdir / "groups" / name  # Per-epoch checkpoints while the group trains.
  _, records = training.train_models(config, splits, overrides, group_dir, run_dirs, log=log)
  rows = [
    {
      **setting,
      "seed": seed,
      **{m: model_records[-1][m] for m in workdir_lib.metric_keys(model_records)},
    }
    for (setting, seed), model_records in zip(members, records)
  ]
  checkpoint.write_text_atomic(done, json.dumps({"shape": shape, "rows": rows}))
  shutil.rmtree(group_dir)  # Finished: the results are in done; the states are not needed.
  return rows


def write_outputs(workdir: Path, study, axes: list[str], rows: list[dict]) -> None:
  metrics = final_metrics(rows)
  with open(workdir / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*axes, "seed", *metrics])
    writer.writeheader()
    writer.writerows(rows)
  summary = aggregate(rows, axes)
  (workdir / "summary.md").write_text(markdown(summary, axes, study, metrics))
  plot(workdir, summary, axes, study.get("x_axis"))


def plot(workdir: Path, summary: list[dict], axes: list[str], x_axis: str | None = None) -> None:
  """test_loss.png against the first axis (one line per value of the others); rate_distortion.png for beta."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return  # Plots are optional: pip install matplotlib.
  first = x_axis if x_axis in axes else axes[0] if axes else None  # None: a study of seeds alone.
  rest = [a for a in axes if a != first]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  lines: dict[tuple, list[dict]] = {}
  for s in summary:
    lines.setdefault(tuple(s[a] for a in rest), []).append(s)
  for key, members in lines.items():
    xs = [str(m[first]) if first else "base" for m in members]
    ax.errorbar(
      xs,
      [m["test_loss_mean"] for m in members],
      [m["test_loss_std"] for m in members],
      marker="o",
      capsize=3,
      label=", ".join(f"{a}={v}" for a, v in zip(rest, key)) or None,
    )
  ax.set_xlabel(first or f"the base setting ({summary[0]['n']} seeds)")
  ax.set_ylabel("test loss (nats per example)")
  if rest:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "test_loss.png", dpi=120)
  plt.close(fig)
  if "objective.beta" in axes and "test_kl_mean" in summary[0]:
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for s in summary:
      ax.errorbar(
        s["test_kl_mean"],
        s["test_bce_mean"],
        xerr=s["test_kl_std"],
        yerr=s["test_bce_std"],
        marker="o",
        capsize=3,
      )
      ax.annotate(
        f"beta={s['objective.beta']}", (s["test_kl_mean"], s["test_bce_mean"]), fontsize=7
      )
    ax.set_xlabel("rate: KL (nats)")
    ax.set_ylabel("distortion: BCE (nats)")
    fig.tight_layout()
    fig.savefig(workdir / "rate_distortion.png", dpi=120)
    plt.close(fig)
