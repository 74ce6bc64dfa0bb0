"""A trained run reopened, and a model with its initial state built from a config.

Neither needs the training loop or any data: the model's shape comes from the config and
the image shape (a checkpoint records both). Reopening a run first imports the plugins it
recorded (vae_jax.plugins), so a run of a model or objective of your own reopens in a
fresh process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from vae_jax import (
  checkpoint,
  config as config_lib,
  group as group_lib,
  plugins,
  workdir as workdir_lib,
)
from vae_jax.registry import ConfigError
from vae_jax.step import TrainState, model_of


@dataclasses.dataclass
class TrainedRun:
  """One checkpoint of a run: its config (filled: every setting written out) and parsed
  settings, model 0's train state and run keys, and the checkpoint's meta (epoch, records,
  data fingerprint, versions)."""

  config: ml_collections.ConfigDict
  settings: config_lib.Settings
  state: TrainState
  keys: dict[str, jax.Array]
  meta: dict[str, Any]

  @property
  def image_shape(self) -> tuple[int, ...]:
    """The model's images (H, W, C)."""
    return tuple(model_of(self.state).image_shape)


def open_run(workdir: epath.PathLike, which: str = "latest") -> TrainedRun:
  """Model 0 of a run's checkpoint: 'latest', 'best' or an epoch number. Nothing is written.

  The config is the one saved with the checkpoint; its recorded plugins are imported first
  (one that cannot be is a ConfigError naming it and the run)."""
  workdir = checkpoint.Path(workdir)
  if not workdir.is_dir():
    raise workdir_lib.WorkdirError(
      f"workdir {workdir}: not a directory (expected one written by `python -m vae_jax train`)"
    )
  if not checkpoint.has_checkpoints(workdir):
    raise checkpoint.CheckpointError(
      f"workdir {workdir}: no checkpoint in {workdir / checkpoint.SUBDIR}"
      " (expected one written by `python -m vae_jax train`)"
    )
  with checkpoint.manager(workdir, read_only=True) as mngr:
    epoch = checkpoint.select(mngr, which)
    meta = checkpoint.read_meta(mngr, epoch)
    plugins.load(meta["config"].get("plugins", []), f"recorded by run {workdir}")
    try:
      config = config_lib.filled(meta["config"])
      settings = config_lib.parse(config)
    except ConfigError as e:
      raise ConfigError(f"run {workdir}: {e}") from None
    train = meta["data"]["train"]
    shape = train["image_shape"]  # Of the data: an encoded posterior's has 2 channels.
    if settings.data.source == "encoded":
      shape = [*shape[:-1], 1]
    group = group_lib.build_group(
      settings, tuple(shape), train["examples"], overrides=meta["models"][:1]
    )
    states, keys = group_lib.create_states(group)
    tree = checkpoint.restore(mngr, epoch, group_lib.state_tree(states, keys), meta)
  states, keys = group_lib.from_state_tree(states, tree)
  meta = {**meta, "records": meta["model_records"][0]}
  return TrainedRun(config, settings, group_lib.unstack(states), group_lib.unstack(keys), meta)


def restore_run(
  workdir: str | Path, which: str = "latest"
) -> tuple[ml_collections.ConfigDict, TrainState, dict[str, jax.Array], dict[str, Any]]:
  """(config, state, keys, meta) of model 0 of a trained run's checkpoint: 'latest', 'best'
  or an epoch number (vae_jax.load_run). Nothing is trained or written; the config is the
  one saved with the checkpoint, and the plugins the run recorded are imported first."""
  run = open_run(workdir, which)
  return run.config, run.state, run.keys, run.meta


def create_state(
  config: config_lib.ConfigLike,
  image_shape: tuple[int, ...] = (28, 28, 1),
  num_train_examples: int = 60_000,
  mean_image: np.ndarray | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """(state, keys): the fresh train state and named run keys a run of this config starts
  from (vae_jax.create_state), without data or a training loop.

  state: a flax TrainState (params, Adam state, step 0, apply_fn = the model's apply);
  keys: {'shuffle', 'noise', 'eval', 'images'} split from key(config.seed).
  num_train_examples sets the run context (steps_per_epoch, num_train_examples);
  mean_image (H x W x C in [0, 1]) feeds data-dependent inits such as mlp's
  output_bias='data_mean' (None: 0.5)."""
  settings = group_lib.as_settings(config)
  group = group_lib.build_group(settings, tuple(image_shape), num_train_examples, mean_image)
  states, keys = group_lib.create_states(group)
  return group_lib.unstack(states), group_lib.unstack(keys)
