"""Checkpoints: exact resume after SIGKILL, atomic saves, retention, refusals, NaN guard.

The runs killed here are real processes (``python -m vae_jax train`` through
tests/pause_run.py, which stops at a given point so the test can SIGKILL it there).
"""

import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cli, make_model, run_cli, synthetic_split, train_args, tree_bytes

from vae_jax import checkpoint, group, step, training

PAUSE_RUN = Path(__file__).parent / "pause_run.py"
TIMING_KEYS = ("train_seconds", "compile_seconds")


def pause_at(point: str, workdir: Path, idx_dir: Path, *extra) -> subprocess.Popen:
  """Starts a training run and returns it once it pauses at point (still alive)."""
  marker = workdir.parent / f"{workdir.name}.{point}"
  proc = subprocess.Popen(
    [
      sys.executable,
      str(PAUSE_RUN),
      point,
      str(marker),
      "--",
      *train_args(workdir, idx_dir, *extra),
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 300
  while not marker.exists():
    assert proc.poll() is None, f"run ended before {point}: {proc.stderr.read()}"
    assert time.monotonic() < deadline, f"run did not reach {point}"
    time.sleep(0.05)
  return proc


def kill_at(point: str, workdir: Path, idx_dir: Path, *extra) -> None:
  """Starts a training run, waits until it pauses at point, and SIGKILLs it."""
  proc = pause_at(point, workdir, idx_dir, *extra)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  assert proc.returncode == -signal.SIGKILL


def metrics(workdir: Path) -> list[dict]:
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def saved_arrays(workdir: Path, which: str = "latest"):
  _, state, keys, _ = training.restore_run(workdir, which)
  return jax.device_get(group.state_tree(state, keys))


def assert_trees_equal_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_killed_after_epoch_1_resumes_bit_identical(trained_run, session_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  kill_at("after_epoch_1", workdir, session_idx_dir)
  assert [r["epoch"] for r in metrics(workdir)] == [1]
  result = cli(*train_args(workdir, session_idx_dir))  # The same command again.
  assert result.returncode == 0, result.stderr
  assert "Resuming from" in result.stdout and "checkpoints/1 (epoch 1)" in result.stdout
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(trained_run))
  assert metrics(workdir) == metrics(trained_run)  # No epoch missing or repeated.


def test_killed_during_a_save_keeps_the_previous_checkpoint(trained_run, session_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  kill_at("saving_2", workdir, session_idx_dir)
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert names[0] == "1" and names[1].startswith("2.orbax-checkpoint-tmp"), names
  _, _, _, meta = training.restore_run(workdir)  # The half-written epoch 2 is not picked up.
  assert meta["epoch"] == 1
  assert [r["epoch"] for r in metrics(workdir)] == [1]
  result = cli(*train_args(workdir, session_idx_dir))
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(trained_run))
  assert metrics(workdir) == metrics(trained_run)


def test_killed_before_the_first_checkpoint_the_same_command_starts_afresh(
  trained_run, session_idx_dir, tmp_path
):
  workdir = tmp_path / "run"
  kill_at("before_checkpoint_1", workdir, session_idx_dir)
  assert not checkpoint.has_checkpoints(workdir)
  assert (workdir / "metrics.jsonl").read_text() == ""  # An empty log: nothing to keep.
  result = cli(*train_args(workdir, session_idx_dir))
  assert result.returncode == 0, result.stderr
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(trained_run))
  assert metrics(workdir) == metrics(trained_run)


def test_the_corrected_command_continues_on_the_workdir_of_a_failed_run(
  trained_run, session_idx_dir, tmp_path
):
  workdir = tmp_path / "run"
  failed = cli(*train_args(workdir, session_idx_dir, "--config.optim.learning_rate=1e30"))
  assert failed.returncode == 1 and "non-finite" in failed.stderr
  result = cli(*train_args(workdir, session_idx_dir))  # The learning rate corrected.
  assert result.returncode == 0, result.stderr
  assert metrics(workdir) == metrics(trained_run)


def test_a_second_process_is_refused_naming_the_first_and_the_first_finishes_alone(
  trained_run, session_idx_dir, tmp_path
):
  workdir = tmp_path / "run"
  first = pause_at("after_epoch_1", workdir, session_idx_dir)
  before = tree_bytes(workdir)
  second = run_cli(*train_args(workdir, session_idx_dir))
  lines = second.stderr.strip().splitlines()
  assert second.returncode == 2 and len(lines) == 1, second.stderr
  assert f"in use by another vae_jax process (pid {first.pid})" in lines[0]
  assert tree_bytes(workdir) == before  # The refused process wrote nothing.
  first.send_signal(signal.SIGKILL)
  first.wait()
  first.stderr.close()
  result = cli(*train_args(workdir, session_idx_dir))  # The lock died with its holder.
  assert result.returncode == 0, result.stderr
  assert metrics(workdir) == metrics(trained_run)


def test_two_processes_started_together_one_is_refused_and_the_other_finishes(
  trained_run, session_idx_dir, tmp_path
):
  for attempt in range(2):  # experiments: 10 of 10 such tries (README, the contract).
    workdir = tmp_path / f"run{attempt}"
    procs = [
      subprocess.Popen(
        [sys.executable, "-m", "vae_jax", *train_args(workdir, session_idx_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
      for _ in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], errors
    refused = errors[[p.returncode for p in procs].index(2)].strip().splitlines()
    assert len(refused) == 1 and "in use by another vae_jax process (pid " in refused[0]
    assert metrics(workdir) == metrics(trained_run)
    assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(trained_run))


def test_images_of_the_epoch_in_flight_are_completed_on_resume(session_idx_dir, tmp_path):
  images_on = "--config.run.save_images=True"
  kill_at("after_epoch_1", tmp_path / "run", session_idx_dir, images_on)
  assert not (tmp_path / "run" / "sample_1.png").exists()  # Killed between log and images.
  for workdir in (tmp_path / "run", tmp_path / "whole"):
    result = cli(*train_args(workdir, session_idx_dir, images_on))
    assert result.returncode == 0, result.stderr
  for name in ("sample_1.png", "reconstruction_1.png", "sample_2.png"):
    assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_sigint_stops_in_one_line_without_a_traceback(session_idx_dir, tmp_path):
  args = train_args(tmp_path / "run", session_idx_dir, "--config.optim.num_epochs=30")
  proc = subprocess.Popen(
    [sys.executable, "-m", "vae_jax", *args],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  log, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
  while not (log.exists() and log.read_text()):
    assert proc.poll() is None, proc.stderr.read()
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)  # Ctrl-C.
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGINT and err.strip().count("\n") == 0, err
  assert "stopped by SIGINT: kept " in err and "Traceback" not in err


def test_sigterm_stops_at_a_safe_point_in_one_line_and_the_same_command_continues(
  session_idx_dir, tmp_path
):
  """12 epochs: the signal lands after epoch 2 with ten to go. The stopped process is real (the
  signal is the point); the continuation and the uninterrupted run go through the entry point
  in this process."""
  args = train_args(tmp_path / "run", session_idx_dir, "--config.optim.num_epochs=12")
  proc = subprocess.Popen(
    [sys.executable, "-m", "vae_jax", *args],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  log, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
  while not (log.exists() and log.read_text().count("\n") >= 2):
    assert proc.poll() is None, proc.stderr.read()
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  lines = err.strip().splitlines()
  assert proc.returncode == 128 + signal.SIGTERM and len(lines) == 1, err
  assert "stopped by SIGTERM: kept " in lines[0] and "run the same command to continue" in lines[0]
  assert 2 <= len(metrics(tmp_path / "run")) < 12
  assert cli(*args).returncode == 0
  whole = cli(*train_args(tmp_path / "whole", session_idx_dir, "--config.optim.num_epochs=12"))
  assert whole.returncode == 0
  assert metrics(tmp_path / "run") == metrics(tmp_path / "whole")


def test_checkpoint_holds_state_keys_config_and_records(trained_run):
  _, state, keys, meta = training.restore_run(trained_run)
  assert int(state.step) == 6 and meta["epoch"] == 2  # 300 examples: 3 steps per epoch.
  assert [r["epoch"] for r in meta["records"]] == [1, 2]
  assert meta["config"]["optim.num_epochs"] == 2 and meta["data"]["train"]["examples"] == 300
  # What computed the numbers: backend, device, versions, float32 matmul precision, flags.
  assert meta["backend"]["backend"] == "cpu" and meta["backend"]["matmul_precision"] == "highest"
  assert {"device_kind", "devices", "jax", "jaxlib", "xla_flags"} <= set(meta["backend"])
  rngs = jax.random.split(jax.random.key(1), 5)[1:]  # What the run derived from seed 1.
  for name, rng in zip(group.KEY_NAMES, rngs):
    np.testing.assert_array_equal(jax.random.key_data(keys[name]), jax.random.key_data(rng))


def test_keeps_the_last_n_and_the_best_across_restarts(tmp_path):
  tree = {"w": np.arange(3, dtype=np.float32)}

  def save(mngr, epoch, test_loss):
    checkpoint.save(
      mngr, epoch, tree, {"config": {}, "model_records": [[{"epoch": epoch}]]}, test_loss
    )

  with checkpoint.manager(tmp_path, keep=2) as mngr:
    for epoch, test_loss in enumerate([5.0, 3.0, 4.0, 4.5, 6.0], start=1):
      save(mngr, epoch, test_loss)
    assert sorted(mngr.all_steps()) == [2, 4, 5]  # Last two, and epoch 2, the best.
    assert checkpoint.select(mngr, "best") == 2 and checkpoint.select(mngr, "latest") == 5
  with checkpoint.manager(tmp_path, keep=2) as mngr:  # As a resumed run sees them.
    save(mngr, 6, 7.0)
    assert sorted(mngr.all_steps()) == [2, 5, 6]
    save(mngr, 7, 1.0)
    assert sorted(mngr.all_steps()) == [6, 7]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6", "7"]


def one_epoch_config():
  from vae_jax.configs import default

  config = default.get_config()
  config.optim.num_epochs, config.run.progress, config.run.save_images = 1, False, False
  return config


@pytest.fixture(scope="module")
def one_epoch_source(tmp_path_factory, small_splits):
  workdir = tmp_path_factory.mktemp("one_epoch") / "run"
  training.train_and_evaluate(one_epoch_config(), workdir, small_splits)
  return workdir


@pytest.fixture()
def one_epoch_run(one_epoch_source, tmp_path):
  """(config, workdir): a copy of a finished 1-epoch run on the small splits, to alter."""
  workdir = tmp_path / "run"
  shutil.copytree(one_epoch_source, workdir)
  return one_epoch_config(), workdir


@pytest.mark.parametrize(
  "key,value,named",
  [
    ("model.latent_dim", 5, "model.latent_dim: 20 -> 5"),
    ("optim.learning_rate", 2e-3, "optim.learning_rate: 0.001 -> 0.002"),
    ("seed", 2, "seed: 1 -> 2"),
    ("run.matmul_precision", "default", "run.matmul_precision: 'highest' -> 'default'"),
  ],
)
def test_incompatible_config_is_refused_and_nothing_changes(
  one_epoch_run, small_splits, key, value, named
):
  config, workdir = one_epoch_run
  before = tree_bytes(workdir)
  config.optim.num_epochs = 2  # Allowed to change: it extends the run.
  config.update_from_flattened_dict({key: value})
  with pytest.raises(checkpoint.CheckpointError, match=f"other settings .*{named}"):
    training.train_and_evaluate(config, workdir, small_splits)
  assert tree_bytes(workdir) == before


def test_other_data_is_refused_and_nothing_changes(one_epoch_run, small_splits):
  config, workdir = one_epoch_run
  before = tree_bytes(workdir)
  other = {"train": synthetic_split(300, 7), "test": small_splits["test"]}
  with pytest.raises(checkpoint.CheckpointError, match="other data \\(the train split differs"):
    training.train_and_evaluate(config, workdir, other)
  assert tree_bytes(workdir) == before


def test_restart_moves_the_old_run_aside(one_epoch_run, small_splits):
  config, workdir = one_epoch_run
  before = tree_bytes(workdir)
  config.run.restart, config.model.latent_dim = True, 5
  _, records = training.train_and_evaluate(config, workdir, small_splits)
  assert [r["epoch"] for r in records] == [1]
  (moved,) = workdir.glob("replaced_*")
  assert tree_bytes(moved) == before  # Every file of the old run, byte for byte.
  assert json.loads((workdir / "config.json").read_text())["model"]["latent_dim"] == 5


def test_finished_run_is_not_trained_again(one_epoch_run, small_splits, capsys):
  config, workdir = one_epoch_run
  before = tree_bytes(workdir)
  training.train_and_evaluate(config, workdir, small_splits)
  assert "Nothing to train" in capsys.readouterr().out
  assert tree_bytes(workdir / "checkpoints") == before_checkpoints(before)


def before_checkpoints(files: dict[str, bytes]) -> dict[str, bytes]:
  return {
    k.removeprefix("checkpoints/"): v for k, v in files.items() if k.startswith("checkpoints/")
  }


def test_nan_from_a_huge_learning_rate_names_epoch_and_step(small_config, small_splits, tmp_path):
  small_config.optim.learning_rate = 1e30
  # The independent count: the first step whose loss is not finite, in a Python loop.
  state, keys, fn, hparams = make_model({"optim.learning_rate": 1e30})
  x = jnp.asarray(small_splits["train"][0])
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(keys["shuffle"], 1), 300))
  first_bad, one_step = None, jax.jit(functools.partial(step.train_step, objective_fn=fn))
  for idx in (perm[:128], perm[128:256], perm[256:]):
    state, m = one_step(state, x[idx], keys["noise"], hparams)
    if first_bad is None and not np.isfinite(float(m["loss"])):
      first_bad = int(state.step)
  assert first_bad is not None
  with pytest.raises(
    FloatingPointError,
    match=f"epoch 1, step {first_bad}: non-finite training loss; last good checkpoint: none yet",
  ):
    training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  assert not checkpoint.has_checkpoints(tmp_path / "run")
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


def test_nan_after_a_checkpoint_leaves_it_untouched(one_epoch_run, small_splits, monkeypatch):
  config, workdir = one_epoch_run
  before = tree_bytes(workdir)
  # Non-finite inputs from epoch 2 on: the resumed run compiles this to_float.
  monkeypatch.setattr(step, "to_float", lambda x_u8, key=None: x_u8.astype(jnp.float32) * jnp.nan)
  config.optim.num_epochs = 2
  with pytest.raises(
    FloatingPointError,
    match=r"epoch 2, step 4: .*last good checkpoint: "
    r".*checkpoints/1 \(left untouched\)",
  ):
    training.train_and_evaluate(config, workdir, small_splits)
  after = tree_bytes(workdir)
  assert before_checkpoints(after) == before_checkpoints(before)
  assert after["metrics.jsonl"] == before["metrics.jsonl"]


def test_debug_nans_reports_the_operation(small_config, small_splits, tmp_path):
  small_config.optim.learning_rate, small_config.run.debug_nans = 1e30, True
  with pytest.raises(FloatingPointError, match="(?i)nan"):
    training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  assert not jax.config.jax_debug_nans  # Switched on for the run only.


def corrupt(where: Path, how: str) -> None:
  data_files = [p for p in (where / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  if how == "truncated":
    for p in data_files:
      p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
  elif how == "flipped":
    content = bytearray(data_files[0].read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_files[0].write_bytes(bytes(content))
  elif how == "meta":
    (where / "meta" / "metadata").write_text("{not json")
  elif how == "missing":
    for p in data_files:
      p.unlink()
  elif how == "emptied":
    for p in where.rglob("*"):
      if p.is_file():
        p.write_bytes(b"")


@pytest.mark.parametrize(
  "how,message",
  [
    ("truncated", "differs from the SHA-256 recorded when it was saved"),
    ("flipped", "differs from the SHA-256 recorded when it was saved"),
    ("meta", "meta/metadata differs from the SHA-256"),
    ("missing", "is missing"),
    ("emptied", "cannot be read"),
  ],
)
def test_corrupted_checkpoint_is_refused(one_epoch_run, small_splits, how, message):
  config, workdir = one_epoch_run
  corrupt(workdir / "checkpoints" / "1", how)
  before = tree_bytes(workdir)
  with pytest.raises(checkpoint.CheckpointError, match=message):
    training.restore_run(workdir)
  config.optim.num_epochs = 2
  with pytest.raises(checkpoint.CheckpointError, match=message):
    training.train_and_evaluate(config, workdir, small_splits)
  assert tree_bytes(workdir) == before


def test_state_from_another_run_fails_the_state_hash(one_epoch_run, small_splits, tmp_path):
  """Without a manifest (a kill between save and manifest) the arrays' SHA-256 still guards:
  here the state files are swapped for another run's, which orbax reads without complaint."""
  config, workdir = one_epoch_run
  config.seed = 2
  training.train_and_evaluate(config, tmp_path / "other", small_splits)
  where = workdir / "checkpoints" / "1"
  (where / checkpoint.MANIFEST).unlink()
  training.restore_run(workdir)  # Intact files restore without the manifest.
  shutil.rmtree(where / "state")
  shutil.copytree(tmp_path / "other" / "checkpoints" / "1" / "state", where / "state")
  with pytest.raises(checkpoint.CheckpointError, match="does not match the SHA-256 recorded"):
    training.restore_run(workdir)
