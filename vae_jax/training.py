"""Training: one loop for K >= 1 models, checkpointed every epoch, resumed by the same command.

``train_and_evaluate`` is the single run (K = 1); the sweep runs groups of K models through
the same ``train_models``. Each epoch: train (epoch.Programs), evaluate, check for a
non-finite loss, checkpoint, then log and images, so a kill never loses a logged epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

from vae_jax import (
  __version__,
  checkpoint,
  config as config_lib,
  cpu_kernels,
  data,
  distributed,
  group as group_lib,
  images,
  interrupt,
  step as step_lib,
  summaries,
  workdir as workdir_lib,
)
from vae_jax.epoch import Programs
from vae_jax.group import check_devices  # noqa: F401  (its home before group.py)
from vae_jax.parallel import data_devices, describe_backend, replicate, shard_models, shard_rows
from vae_jax.runs import restore_run  # noqa: F401  (its home before runs.py)

COUNTS = ("examples", "first_nonfinite_step")  # Sums of train_step's that are not metrics.


def metric_order(name: str) -> tuple:
  """Sampled metrics before their z = mu versions; within each, loss first, then by name.

  (jax returns dicts with sorted keys; this order is the reference's metrics.jsonl.)
  """
  base = name.removesuffix("_mean_z")
  return (name.endswith("_mean_z"), base != "loss", base)


def make_record(epoch: int, train_sums: dict, test_sums: dict, n_test: int, k: int) -> dict:
  """Model k's epoch record: train_<metric>, test_<metric> (nats per example)."""
  examples = int(train_sums["examples"][k])
  record: dict[str, float] = {"epoch": epoch}
  record.update(
    {
      f"train_{m}": float(train_sums[m][k]) / examples
      for m in sorted(set(train_sums) - set(COUNTS), key=metric_order)
    }
  )
  record.update(
    {f"test_{m}": float(test_sums[m][k]) / n_test for m in sorted(test_sums, key=metric_order)}
  )
  return record


def train_models(
  config: config_lib.ConfigLike,
  splits: data.Splits,
  overrides: list[dict] | None,
  ckpt_dir: Path,
  run_dirs: Sequence[Path | None],
  log: Callable[[str], None] = print,
  group: group_lib.Group | None = None,
) -> tuple[step_lib.TrainState, list[list[dict[str, Any]]]]:
  """Trains K = len(overrides) models in one program; returns (states, records per model).

  config: a ConfigDict or a parsed config.Settings; ckpt_dir: where the stacked states are
  checkpointed after every epoch (and resumed from); run_dirs[k]: model k's metrics.jsonl,
  images and TensorBoard (None: nothing written). group: made already (make_group).
  """
  group = group or group_lib.make_group(
    config, splits, overrides
  )  # Given: built (and checked) already.
  settings, num_models = group.settings, group.num_models
  primary = distributed.is_primary()
  fingerprint = checkpoint.data_fingerprint(splits)
  kernels, why = cpu_kernels.configure(settings.run.cpu_kernels)  # Before the backend starts.
  backend = describe_backend(settings.run.matmul_precision)
  # The checkpoint records the kernel path, not 'auto': a resume compares what computed.
  meta_base = {
    "config": {**settings.flat, "run.cpu_kernels": kernels},
    "models": group.overrides,
    "data": fingerprint,
    "versions": {"jax": jax.__version__, "vae_jax": __version__},
    "backend": backend,
  }
  if primary:
    log(
      f"Backend: {backend['backend']} ({backend['device_kind']} x {backend['devices']}), jax "
      f"{backend['jax']}, matmul precision {backend['matmul_precision']}"
      + (f", XLA_FLAGS={backend['xla_flags']}" if backend["xla_flags"] else "")
    )
    if backend["backend"] == "cpu":
      log(f"CPU kernels: {kernels} ({why})")
  # 1. Fresh states and keys from the seeds: where a new run starts, and the layout a
  #    checkpoint is restored into.
  states, keys = group_lib.create_states(group)
  records: list[list[dict[str, Any]]]
  records, last_good = [[] for _ in range(num_models)], None
  # 2. A directory with checkpoints continues from its latest, if settings and data match
  #    (process 0 decides and reads; the others receive its state).
  resumed = resume(ckpt_dir, meta_base, states, keys)
  if resumed is not None:
    states, keys, records, last_good = resumed
    if primary:
      log(f"Resuming from {last_good} (epoch {records[0][-1]['epoch']})")
  # 3. Writes start here. Logs are rewritten from the checkpoint's records: an epoch is never
  #    missing or repeated. config.json: each model's config, its overrides applied.
  if primary:
    for run_dir, model_records, model_overrides in zip(run_dirs, records, group.overrides):
      if run_dir is not None:
        model_config = config_lib.from_flat({**settings.flat, **model_overrides})
        checkpoint.write_text_atomic(run_dir / "config.json", model_config.to_json(indent=2) + "\n")
        workdir_lib.write_metrics(run_dir, model_records)
  distributed.barrier("resume")
  first_epoch = len(records[0]) + 1
  # A kill between a checkpoint and its images: the resumed run writes them first (one
  # process: with several, each would have to agree before computing them together).
  missing_images = [
    d
    for d in run_dirs
    if jax.process_count() == 1
    and records[0]
    and settings.run.save_images
    and d is not None
    and not (d / f"sample_{records[0][-1]['epoch']}.png").exists()
  ]
  if first_epoch > settings.optim.num_epochs:
    log(
      f"Nothing to train: {ckpt_dir} holds {len(records[0])} epochs, "
      f"config.optim.num_epochs={settings.optim.num_epochs}"
    )
    if not missing_images:
      return states, records
  mesh = group.mesh
  # The train set split over the data axis (each device holds its rows); the test set whole.
  train_u8, test_u8 = shard_rows(splits["train"][0], mesh), replicate(splits["test"][0], mesh)
  # A conditional model's labels: whole on every device (an epoch's order gathers them).
  train_labels, test_data = None, test_u8
  if group.model.conditional:
    train_labels = replicate(splits["train"][1].astype(np.int32), mesh)
    test_data = (test_u8, replicate(splits["test"][1].astype(np.int32), mesh))
  states, keys = replicate((states, keys), mesh)
  if num_models > 1 and group.strategy() == "vmap":
    states, keys = shard_models((states, keys), num_models, settings.run.num_devices)
  saver = checkpoint.Writer(ckpt_dir, settings.run.keep_checkpoints, settings.run.async_checkpoints)
  last_saved = time.monotonic()
  writers = [
    summaries.open_writer(d / "tensorboard")
    if d is not None and primary and settings.run.tensorboard
    else None
    for d in run_dirs
  ]
  progress = ProgressBar(settings.run.progress and primary)
  # Compilation and every epoch under the run's float32 matmul precision.
  with jax.default_matmul_precision(settings.run.matmul_precision):
    try:
      t0 = time.perf_counter()
      programs = Programs(
        group,
        states,
        keys,
        train_u8,
        test_data,
        mesh,
        settings.run.progress_chunks if settings.run.progress else 1,
        settings.run.debug_nans,
        train_labels,
      )
      compile_seconds = time.perf_counter() - t0
      kept = lambda: (
        f"kept {last_good} (epoch {records[0][-1]['epoch']})"
        if last_good
        else f"no epoch finished, nothing kept in {ckpt_dir}"
      )

      def on_chunk(step: int) -> None:  # As each chunk of an epoch finishes.
        progress.update(step)
        interrupt.check(kept())

      interrupt.check(kept())
      if missing_images:
        grids = jax.device_get(programs.grids(states, keys, records[0][-1]["epoch"]))
        write_images(
          [d if d in missing_images else None for d in run_dirs],
          writers,
          grids,
          records[0][-1]["epoch"],
        )
      for epoch in range(first_epoch, settings.optim.num_epochs + 1):
        progress.start(epoch, group.steps_per_epoch, (epoch - 1) * group.steps_per_epoch)
        t0 = time.perf_counter()
        with jax.debug_nans(settings.run.debug_nans):
          states, train_sums = programs.train_epoch(states, keys, epoch, on_chunk)
          train_sums = jax.device_get(train_sums)  # Waits for the epoch to finish.
        train_seconds = time.perf_counter() - t0
        progress.close()
        test_sums = jax.device_get(programs.test_sums(states, keys, epoch))
        check_finite(group, epoch, train_sums, test_sums, last_good)
        for k in range(num_models):
          records[k].append(
            {
              **make_record(epoch, train_sums, test_sums, len(test_u8), k),
              "train_examples": int(train_sums["examples"][k]),
              "steps": int(states.step[k]),
              "train_seconds": train_seconds,
              "compile_seconds": compile_seconds if epoch == first_epoch else 0.0,
            }
          )
        # The checkpoint first, then the logs it covers: a kill in between loses no record
        # (the logs are rewritten from the checkpoint's records when the run resumes).
        if checkpoint_due(settings, epoch, last_saved, interrupt.requested()):
          mean_test = float(np.mean([r[-1]["test_loss"] for r in records]))
          last_good = saver.save(
            epoch,
            group_lib.state_tree(states, keys),
            {**meta_base, "model_records": records},
            mean_test,
          )
          last_saved = time.monotonic()
        grids = (
          jax.device_get(programs.grids(states, keys, epoch)) if settings.run.save_images else None
        )
        if primary:
          workdir_lib.mark_pending(ckpt_dir, not (saver.finished or resumed))
          write_epoch(run_dirs, writers, records, grids, epoch, log)
        interrupt.check(kept())
    finally:
      progress.close()
      saver.close()
      if primary and (saver.finished or resumed):
        workdir_lib.mark_pending(ckpt_dir, False)
      for writer in writers:
        if writer is not None:
          writer.close()
  return states, records


def checkpoint_due(
  settings: config_lib.Settings, epoch: int, last_saved: float, stopping: bool
) -> bool:
  """Whether epoch ends with a checkpoint: the last epoch, a stop asked for, every N-th epoch,
  or S seconds since the last one (config.run.checkpoint_every_*)."""
  every, seconds = settings.run.checkpoint_every_epochs, settings.run.checkpoint_every_seconds
  return (
    epoch == settings.optim.num_epochs
    or stopping
    or bool(every and epoch % every == 0)
    or bool(seconds and time.monotonic() - last_saved >= seconds)
  )


def write_epoch(run_dirs, writers, records, grids, epoch: int, log) -> None:
  """Every model's metrics.jsonl, TensorBoard scalars and (grids given) images of the epoch."""
  for k, (run_dir, writer) in enumerate(zip(run_dirs, writers)):
    if run_dir is None:
      continue
    if len(run_dirs) == 1:
      log(f"====> Epoch: {epoch} Average loss: {records[k][-1]['train_loss']:.4f}")
      log(f"====> Test set loss: {records[k][-1]['test_loss']:.4f}")
    workdir_lib.write_metrics(run_dir, records[k])
    summaries.write_records(writer, [records[k][-1]])
  if grids is not None:
    write_images(run_dirs, writers, grids, epoch)


def write_images(run_dirs, writers, grids, epoch: int) -> None:
  """reconstruction_<epoch>.png and sample_<epoch>.png of every model with a run directory."""
  for k, (run_dir, writer) in enumerate(zip(run_dirs, writers)):
    if run_dir is None:
      continue
    for name, pixels in zip(("reconstruction", "sample"), grids):
      grid = images.image_grid(pixels[k], nrow=8)
      images.save_png(run_dir / f"{name}_{epoch}.png", grid)
      summaries.write_grid(writer, name, grid, epoch)


def check_finite(group, epoch: int, train_sums, test_sums, last_good) -> None:
  """FloatingPointError naming the model, epoch and step of the first non-finite loss."""
  for k in range(group.num_models):
    bad_step = int(train_sums["first_nonfinite_step"][k])
    if bad_step >= 0 or not math.isfinite(float(test_sums["loss"][k])):
      where = (
        f"step {bad_step}: non-finite training loss" if bad_step >= 0 else "non-finite test loss"
      )
      model = f"model {k} ({group.describe(k)}), " if group.num_models > 1 else ""
      raise FloatingPointError(
        f"{model}epoch {epoch}, {where}; last good checkpoint: {last_good or 'none yet'} (left "
        "untouched); rerun with --config.run.debug_nans=True to find the operation that made it"
      )


def resume(ckpt_dir: Path, meta_base: dict, states, keys):
  """(states, keys, records, checkpoint dir) from the latest checkpoint in ckpt_dir, or None.

  Process 0 decides and reads; the others receive its decision and state, and every process
  checks that it holds the same state (SHA-256), so no disk need be shared. Refuses
  (CheckpointError, nothing written, on every process) a checkpoint made with settings that
  change the numbers, or from other data.
  """
  outcome, tree = None, group_lib.state_tree(states, keys)
  if distributed.is_primary():
    try:
      if checkpoint.has_checkpoints(ckpt_dir):
        tree, records, where = read_latest(ckpt_dir, meta_base, tree)
        outcome = {"records": records, "where": str(where)}
    except checkpoint.CheckpointError as e:
      outcome = {"error": str(e)}
  outcome = distributed.broadcast_json(outcome)
  if outcome is None:  # A fresh start: every process made its state from the same seeds.
    if jax.process_count() > 1:
      distributed.check_same(
        checkpoint.tree_sha256(checkpoint.host_copy(tree)), "the initial state"
      )
    return None
  if "error" in outcome:
    raise checkpoint.CheckpointError(outcome["error"])
  if jax.process_count() > 1:
    tree = distributed.broadcast_tree(checkpoint.host_copy(tree))
    distributed.check_same(checkpoint.tree_sha256(tree), "the restored state")
  states, keys = group_lib.from_state_tree(states, tree)
  return states, keys, outcome["records"], Path(outcome["where"])


def read_latest(ckpt_dir: Path, meta_base: dict, target_tree):
  """(state tree, records, where) of ckpt_dir's latest checkpoint, checked against the run."""
  with checkpoint.manager(ckpt_dir, read_only=True) as mngr:
    epoch = checkpoint.select(mngr, "latest")
    where = checkpoint.checkpoint_dir(mngr, epoch)
    meta = checkpoint.read_meta(mngr, epoch)
    saved = {
      **config_lib.effective(meta["config"]),
      **{f"model {k}: {key}": v for k, o in enumerate(meta["models"]) for key, v in o.items()},
    }
    current = {
      **meta_base["config"],
      **{f"model {k}: {key}": v for k, o in enumerate(meta_base["models"]) for key, v in o.items()},
    }
    differences = config_lib.differences(saved, current)
    if differences:
      raise checkpoint.CheckpointError(
        f"{ckpt_dir}: its checkpoint {where} was made with other settings (saved -> requested: "
        f"{'; '.join(differences)}); resume with the saved values, or pass "
        "--config.run.restart=True to move that run aside and start afresh"
      )
    if meta.get("data") != meta_base["data"]:
      splits = sorted(
        s for s in meta_base["data"] if meta.get("data", {}).get(s) != meta_base["data"][s]
      )
      raise checkpoint.CheckpointError(
        f"{ckpt_dir}: its checkpoint {where} was made from other data (the {' and '.join(splits)} "
        "split differs: examples, image shape or SHA-256); use the same data, or pass "
        "--config.run.restart=True"
      )
    tree = checkpoint.restore(mngr, epoch, target_tree, meta)
  return tree, meta["model_records"], where


def train_and_evaluate(
  config: config_lib.ConfigLike, workdir: epath.PathLike, splits: data.Splits | None = None
) -> tuple[step_lib.TrainState, list[dict[str, Any]]]:
  """Trains one model as the reference does, checkpointing every epoch; resumes a killed run.

  Writes config.json, metrics.jsonl, checkpoints/ and the images to workdir. Returns the
  final state and the per-epoch records (those of metrics.jsonl). ``splits`` (optional)
  replaces the configured data source: {'train': (x, y), 'test': (x, y)}. config: a
  ConfigDict (its config.plugins are imported) or a parsed config.Settings.
  """
  settings = group_lib.as_settings(config)  # The one parse, handed down.
  if settings.run.per_device_batch_size:  # The global batch, from the devices it will use.
    batch_size = settings.run.per_device_batch_size * data_devices(
      settings.run.num_devices, 0, settings.run.per_device_batch_size
    )
    settings = dataclasses.replace(
      settings,
      optim=dataclasses.replace(settings.optim, batch_size=batch_size),
      flat={**settings.flat, "optim.batch_size": batch_size},
    )
  splits = splits or data.load_data(settings.data)
  group = group_lib.make_group(
    settings, splits
  )  # Every check that needs the data, before any write.
  workdir = workdir_lib.check_directory(workdir)
  # Process 0 alone locks, creates, checks and writes the workdir.
  primary = distributed.is_primary()
  with workdir_lib.locked(workdir) if primary else contextlib.nullcontext():
    if primary:
      workdir_lib.prepare_workdir(
        workdir,
        restart=settings.run.restart,
        num_epochs=settings.optim.num_epochs,
        images=settings.run.save_images,
        tensorboard=settings.run.tensorboard,
      )
    distributed.barrier("prepare_workdir")
    states, records = train_models(settings, splits, None, workdir, [workdir], group=group)
  return group_lib.unstack(states), records[0]


class ProgressBar:
  """A tqdm bar over one epoch's steps, moved as the epoch's compiled chunks finish."""

  def __init__(self, enabled: bool):
    self.enabled = enabled
    self.bar = None

  def start(self, epoch: int, total_steps: int, first_step: int):
    if self.enabled:
      from tqdm import tqdm

      self.bar = tqdm(
        total=total_steps, desc=f"epoch {epoch}", unit="step", leave=False, file=sys.stderr
      )
      self.first_step = first_step

  def update(self, step):
    if self.bar is not None:
      self.bar.n = min(int(step) - self.first_step, self.bar.total)
      self.bar.refresh()

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None
