"""Kill it anywhere: SIGKILL at eight points of a short run, then the same command; the run
ends bit-identical (parameters, optimizer state, keys, metrics.jsonl, images) to one never
killed. The killed run is a real process (the kill is the point); the same command afterwards,
and the uninterrupted run, go through the same entry point in this process (conftest.cli).
(Epoch 2's save points repeat epoch 1's with a checkpoint already there, which epoch_2_mid
covers: left out to keep the suite in budget.)"""

import pytest
from conftest import cli, train_args
from test_checkpoint import assert_trees_equal_bitwise, kill_at, metrics, saved_arrays

POINTS = [
  "before_compile",
  "compiling",
  "epoch_1_mid",
  "before_checkpoint_1",
  "saving_1",
  "after_checkpoint_1",
  "after_epoch_1",
  "epoch_2_mid",
]
# Progress in chunks (so a kill can land mid-epoch) and images on: every output is compared.
EXTRA = (
  "--config.run.progress=True",
  "--config.run.progress_chunks=3",
  "--config.run.save_images=True",
)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, session_idx_dir):
  workdir = tmp_path_factory.mktemp("whole") / "run"
  result = cli(*train_args(workdir, session_idx_dir, *EXTRA))
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.mark.parametrize("point", POINTS)
def test_killed_anywhere_the_same_command_ends_bit_identical(
  point, whole_run, session_idx_dir, tmp_path
):
  workdir = tmp_path / "run"
  kill_at(point, workdir, session_idx_dir, *EXTRA)
  result = cli(*train_args(workdir, session_idx_dir, *EXTRA))  # The same command.
  assert result.returncode == 0, result.stderr
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(whole_run))
  assert metrics(workdir) == metrics(whole_run)
  for name in ("reconstruction_1.png", "sample_1.png", "reconstruction_2.png", "sample_2.png"):
    assert (workdir / name).read_bytes() == (whole_run / name).read_bytes(), name


@pytest.mark.parametrize("point", ["saving_1", "epoch_2_mid"])
def test_killed_with_background_checkpoints_ends_bit_identical(
  point, whole_run, session_idx_dir, tmp_path
):
  """Saves in a background thread: a kill while one is in flight loses at most the epochs
  after the last finished checkpoint; the same command ends as the uninterrupted run."""
  workdir = tmp_path / "run"
  extra = (*EXTRA, "--config.run.async_checkpoints=True")
  kill_at(point, workdir, session_idx_dir, *extra)
  result = cli(*train_args(workdir, session_idx_dir, *extra))
  assert result.returncode == 0, result.stderr
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(whole_run))
  assert metrics(workdir) == metrics(whole_run)


def test_killed_before_the_first_of_sparse_checkpoints_starts_afresh(
  whole_run, session_idx_dir, tmp_path
):
  """Every 2nd epoch checkpointed: killed with epoch 1 logged and nothing saved, the same
  command starts afresh (the log was provisional) and ends as the uninterrupted run."""
  workdir = tmp_path / "run"
  extra = (*EXTRA, "--config.run.checkpoint_every_epochs=2")
  kill_at("after_epoch_1", workdir, session_idx_dir, *extra)
  assert (workdir / ".first_checkpoint_pending").exists()
  result = cli(*train_args(workdir, session_idx_dir, *extra))
  assert result.returncode == 0, result.stderr
  assert_trees_equal_bitwise(saved_arrays(workdir), saved_arrays(whole_run))
  assert metrics(workdir) == metrics(whole_run)
  assert not (workdir / ".first_checkpoint_pending").exists()
