"""What a run does to scale out: checkpoint cadence and background saves, the data axis's
device count and per-device batch, the model axis, and joining a cluster."""

import re

import jax
import pytest
from conftest import run_python_json
from test_checkpoint import assert_trees_equal_bitwise, saved_arrays

from vae_jax import checkpoint, config as config_lib, distributed, parallel, training
from vae_jax.registry import ConfigError


def _steps(workdir):
  with checkpoint.manager(workdir, read_only=True) as mngr:
    return sorted(mngr.all_steps())


def test_checkpoint_every_n_epochs_keeps_every_epochs_record(small_config, small_splits, tmp_path):
  small_config.optim.num_epochs, small_config.run.save_images = 3, False
  _, every = training.train_and_evaluate(small_config, tmp_path / "every", small_splits)
  small_config.run.checkpoint_every_epochs, small_config.run.keep_checkpoints = 2, 5
  _, sparse = training.train_and_evaluate(small_config, tmp_path / "sparse", small_splits)
  assert _steps(tmp_path / "sparse") == [2, 3]  # Every 2nd epoch, and the last.
  assert [r["test_loss"] for r in sparse] == [r["test_loss"] for r in every]
  assert_trees_equal_bitwise(saved_arrays(tmp_path / "sparse"), saved_arrays(tmp_path / "every"))
  small_config.optim.num_epochs = 4  # Resumes from epoch 3 (the last, always saved).
  _, more = training.train_and_evaluate(small_config, tmp_path / "sparse", small_splits)
  assert [r["epoch"] for r in more] == [1, 2, 3, 4] and _steps(tmp_path / "sparse") == [2, 3, 4]


def test_asynchronous_checkpoints_are_the_synchronous_ones(small_config, small_splits, tmp_path):
  small_config.run.save_images = False
  _, sync = training.train_and_evaluate(small_config, tmp_path / "sync", small_splits)
  small_config.run.async_checkpoints = True
  _, background = training.train_and_evaluate(small_config, tmp_path / "async", small_splits)
  assert [r["test_loss"] for r in background] == [r["test_loss"] for r in sync]
  assert _steps(tmp_path / "async") == [1, 2]
  for epoch in ("1", "2"):
    assert_trees_equal_bitwise(
      saved_arrays(tmp_path / "async", epoch), saved_arrays(tmp_path / "sync", epoch)
    )
    assert (tmp_path / "async" / "checkpoints" / epoch / checkpoint.MANIFEST).exists()


def test_checkpoint_cadence_by_time_and_on_a_stop():
  settings = config_lib.parse(
    {
      "optim": {"num_epochs": 10},
      "run": {"checkpoint_every_epochs": 0, "checkpoint_every_seconds": 60},
    }
  )
  import time

  now = time.monotonic()
  assert not training.checkpoint_due(settings, 3, now, stopping=False)
  assert training.checkpoint_due(settings, 3, now - 61, stopping=False)  # A minute passed.
  assert training.checkpoint_due(settings, 3, now, stopping=True)  # A signal: save first.
  assert training.checkpoint_due(settings, 10, now, stopping=False)  # The last epoch.


@pytest.mark.parametrize(
  "key, value, expected",
  [
    ("checkpoint_every_epochs", -1, "0 (not by count) or a number of epochs"),
    ("checkpoint_every_seconds", float("inf"), "0 (not by time) or a finite number of seconds"),
    ("per_device_batch_size", -2, "0 (use optim.batch_size) or an integer in [1, 2**31)"),
  ],
)
def test_bad_scaling_settings_are_refused(key, value, expected):
  with pytest.raises(
    ConfigError, match=re.escape(f"config.run.{key}={value!r}: expected {expected}")
  ):
    config_lib.parse({"run": {key: value}})


def test_auto_data_parallelism_keeps_a_small_batch_on_one_device(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  assert parallel.data_devices(0, 128) == 1  # The reference's batch is not split.
  assert parallel.data_devices(0, 1024) == 4  # 256 examples per device.
  assert parallel.data_devices(0, 768) == 3
  assert parallel.data_devices(0, 128, per_device_batch_size=16) == 8
  assert parallel.data_devices(2, 128) == 2
  with pytest.raises(ConfigError, match="config.run.num_devices=9: only 8 devices"):
    parallel.data_devices(9, 128)


def test_per_device_batch_on_four_devices_and_the_model_axis_over_a_divisor(tmp_path):
  out = run_python_json(
    """
      import json, tempfile
      import jax, numpy as np
      from conftest import synthetic_split
      from vae_jax import parallel, training
      from vae_jax.configs import default
      splits = {"train": synthetic_split(300, 0), "test": synthetic_split(64, 1)}
      config = default.get_config()
      config.optim.num_epochs, config.run.progress, config.run.save_images = 1, False, False
      config.run.per_device_batch_size = 32
      workdir = tempfile.mkdtemp() + "/run"
      state, records = training.train_and_evaluate(config, workdir, splits)
      saved = json.load(open(workdir + "/config.json"))
      tree = {"a": jax.numpy.zeros((6, 2))}
      print(json.dumps({"batch": saved["optim"]["batch_size"], "steps": records[-1]["steps"],
                        "six_on_4": len(parallel.shard_models(tree, 6)["a"].sharding.device_set),
                        "six_on_2": len(parallel.shard_models(tree, 6, 2)["a"].sharding.device_set),
                        "five": len(parallel.shard_models(tree, 5)["a"].sharding.device_set)}))
      """,
    devices=4,
  )
  assert out["batch"] == 128 and out["steps"] == 3  # 32 per device x 4 devices: 300 in 3 steps.
  assert (out["six_on_4"], out["six_on_2"], out["five"]) == (3, 2, 1)


def test_a_cluster_jax_knows_gets_the_no_argument_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  for name in ("JAX_COORDINATOR_ADDRESS", *distributed.CLUSTER_HINTS):
    monkeypatch.delenv(name, raising=False)
  assert not distributed.initialize() and not calls  # A single process: nothing to join.
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not distributed.initialize()
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.initialize() and calls == [((), {})]
  assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "t0,t1"})
  assert not distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "t0"})


def test_an_accelerator_run_caches_its_executables_for_resume(monkeypatch, tmp_path):
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  suite_cache = {name: getattr(jax.config, name) for name in names}  # conftest's: restored below.
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    assert parallel.configure_compilation_cache({}) is None  # The CPU: nothing cached.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert parallel.configure_compilation_cache({"VAE_JAX_COMPILATION_CACHE": "off"}) is None
    where = parallel.configure_compilation_cache({"VAE_JAX_COMPILATION_CACHE": str(tmp_path)})
    assert where == str(tmp_path) == jax.config.jax_compilation_cache_dir
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert parallel.describe_backend("highest")["compilation_cache"] == str(tmp_path)
  finally:
    for name, value in suite_cache.items():
      jax.config.update(name, value)


def test_workdir_paths_go_through_epath(tmp_path):
  from etils import epath

  from vae_jax import workdir

  assert isinstance(workdir.check_directory(tmp_path / "w"), epath.Path)
  assert checkpoint.is_local(tmp_path) and not checkpoint.is_local("gs://bucket/run")
  assert str(checkpoint.absolute("gs://bucket/run")) == "gs://bucket/run"
  assert checkpoint.absolute("rel").is_absolute()
