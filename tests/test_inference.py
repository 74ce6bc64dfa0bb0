"""Using a trained run from the command line, and bad input as a new user would try it.

Every failure is one line on stderr, a non-zero exit, and no change to existing files. The
CLI's entry point runs in this process (conftest.cli): the files and lines are what matter.
"""

import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from conftest import cli, train_args, tree_bytes, write_idx
from PIL import Image

from vae_jax import inference, training


def test_evaluate_reproduces_the_recorded_test_loss(trained_run):
  result = cli("evaluate", f"--workdir={trained_run}")
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  recorded = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
  assert out["epoch"] == 2 and out["examples"] == 100
  assert out["loss"] == out["recorded_test_loss"] == recorded["test_loss"]  # Same key, same sums.
  assert out["loss_mean_z"] == recorded["test_loss_mean_z"]
  # Diagnostics: the KL per dimension sums to the loss's KL term (float64 numpy vs the
  # float32 batch sums of training); activity decides the warning.
  assert len(out["kl_per_dim"]) == 20 and 0 <= out["active_units"] <= 20
  np.testing.assert_allclose(sum(out["kl_per_dim"]), out["kl"], rtol=1e-3)
  assert (out["collapse_warning"] is None) == (out["active_units"] == 20)


def test_encode_writes_means_logvars_and_labels(trained_run, small_splits, tmp_path):
  out = tmp_path / "latents.npz"
  result = cli("encode", f"--workdir={trained_run}", "--split=test", f"--out={out}")
  assert result.returncode == 0, result.stderr
  latents = np.load(out)
  images, labels = small_splits["test"]
  assert latents["mu"].shape == latents["logvar"].shape == (100, 20)
  assert latents["mu"].dtype == np.float32
  np.testing.assert_array_equal(latents["labels"], labels)
  # The encoder written out in numpy with the restored weights.
  _, state, _, _ = training.restore_run(trained_run)
  p = jax.device_get(state.params)["encoder"]
  x = images.reshape(100, -1).astype(np.float64) / 255.0
  h = np.maximum(x @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
  np.testing.assert_allclose(
    latents["mu"], h @ p["mu"]["kernel"] + p["mu"]["bias"], rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    latents["logvar"], h @ p["logvar"]["kernel"] + p["logvar"]["bias"], rtol=1e-4, atol=1e-5
  )


def test_sample_writes_a_grid_determined_by_the_seed(trained_run, tmp_path):
  out = tmp_path / "cli.png"
  result = cli("sample", f"--workdir={trained_run}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert Image.open(out).size == (242, 242)  # 8 x 8 tiles of 28 + 2 padding.
  paths = {
    name: inference.sample(trained_run, tmp_path / f"{name}.png", num=16, seed=seed)
    for name, seed in (("a", 3), ("b", 3), ("c", 4))
  }
  assert Image.open(paths["a"]).size == (242, 62)
  assert paths["a"].read_bytes() == paths["b"].read_bytes()
  assert paths["a"].read_bytes() != paths["c"].read_bytes()


def test_reconstruct_shows_originals_over_reconstructions(trained_run, small_splits, tmp_path):
  out = tmp_path / "recon.png"
  result = cli(
    "reconstruct", f"--workdir={trained_run}", "--num=8", f"--out={out}", "--checkpoint=best"
  )
  assert result.returncode == 0, result.stderr
  grid = np.asarray(Image.open(out).convert("L"))
  assert grid.shape == (62, 242)
  for i in range(8):  # Row 1: the first 8 test images, exactly.
    np.testing.assert_array_equal(
      grid[2:30, 2 + 30 * i : 30 + 30 * i], small_splits["test"][0][i, ..., 0]
    )


def one_line_failure(result, status=2):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  return lines[0]


@pytest.mark.parametrize(
  "command,args,message",
  [
    (
      "evaluate",
      ["--checkpoint=9"],
      "checkpoint '9': expected 'latest', 'best' or one of the saved epochs 1, 2",
    ),
    ("sample", [], "sample: --out is required"),
    ("sample", ["--out=/nonexistent/s.png"], "directory /nonexistent does not exist"),
    ("encode", ["--out=latents.png"], "expected a .npz file name"),
    ("reconstruct", ["--out=r.png", "--num=0"], "--num 0: expected 1 to 100"),
  ],
)
def test_bad_use_arguments_are_one_line(trained_run, command, args, message):
  assert message in one_line_failure(cli(command, f"--workdir={trained_run}", *args))


def test_workdir_without_checkpoints_is_refused(tmp_path):
  assert "no checkpoint in" in one_line_failure(cli("evaluate", f"--workdir={tmp_path}"))
  assert "not a directory" in one_line_failure(cli("evaluate", f"--workdir={tmp_path / 'no'}"))


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_corrupted_checkpoint_is_one_line_and_changes_nothing(
  trained_run, session_idx_dir, tmp_path, command
):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  for path in (workdir / "checkpoints" / "2" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:10])  # Truncated, as by a full disk.
  before = tree_bytes(workdir)
  args = (
    train_args(workdir, session_idx_dir, "--config.optim.num_epochs=3")
    if command == "train"
    else [command, f"--workdir={workdir}"]
  )
  line = one_line_failure(cli(*args))
  assert "checkpoints/2: file state/d/" in line and "truncated or corrupted" in line
  assert tree_bytes(workdir) == before


def _immutable(path, on: bool) -> bool:
  """chattr +i/-i: makes a directory unwritable even for root; False if unsupported here."""
  try:
    return (
      subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode
      == 0
    )
  except FileNotFoundError:
    return False


def test_read_only_workdir_is_refused_untouched(trained_run, session_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  before = tree_bytes(workdir)
  if not _immutable(workdir, True):
    if os.geteuid() == 0:
      pytest.skip("root without chattr support: no way to make a read-only directory here")
    workdir.chmod(0o555)
  try:
    line = one_line_failure(
      cli(*train_args(workdir, session_idx_dir, "--config.optim.num_epochs=3"))
    )
  finally:
    _immutable(workdir, False)
    workdir.chmod(0o755)
  assert f"workdir {workdir}: not writable" in line
  assert tree_bytes(workdir) == before


@pytest.mark.parametrize(
  "damage,message",
  [
    ("missing", "missing t10k-labels-idx1-ubyte[.gz]"),
    ("corrupt", "t10k-labels-idx1-ubyte.gz: corrupt gzip stream"),
    ("wrong_magic", "t10k-labels-idx1-ubyte.gz: expected magic 2049"),
  ],
)
def test_damaged_data_directory_is_one_line(idx_dir, small_splits, tmp_path, damage, message):
  labels = idx_dir / "t10k-labels-idx1-ubyte.gz"
  if damage == "missing":
    labels.unlink()
  elif damage == "corrupt":
    labels.write_bytes(labels.read_bytes()[:20])
  else:
    write_idx(labels, small_splits["test"][0], compress=True)  # Images where labels belong.
  before = tree_bytes(idx_dir)
  line = one_line_failure(cli(*train_args(tmp_path / "run", idx_dir)))
  assert message in line
  assert not (tmp_path / "run").exists() and tree_bytes(idx_dir) == before


def test_nan_is_one_line_with_exit_1(session_idx_dir, tmp_path):
  line = one_line_failure(
    cli(*train_args(tmp_path / "run", session_idx_dir, "--config.optim.learning_rate=1e30")),
    status=1,
  )
  assert "epoch 1, step" in line and "last good checkpoint: none yet" in line
  assert "--config.run.debug_nans=True" in line
