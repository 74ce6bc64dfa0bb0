"""``python -m vae_jax``: a real run on small IDX data, and one-line errors for bad input.

The entry point runs in this process (conftest.cli); one test starts the module in a fresh
interpreter, to show ``python -m vae_jax`` itself exits with the status main returns."""

import json

import pytest
from conftest import cli, run_cli


def test_train_runs_from_the_command_line(idx_dir, tmp_path):
  workdir = tmp_path / "run"
  result = cli(
    "train",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.dir={idx_dir}",
    "--config.optim.num_epochs=2",
    "--config.model.latent_dim=5",
    "--config.run.progress=False",
  )
  assert result.returncode == 0, result.stderr
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert (
    "====> Epoch: 2 Average loss:" in result.stdout and "| epoch | train loss |" in result.stdout
  )
  assert json.loads((workdir / "config.json").read_text())["model"]["latent_dim"] == 5


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.model.latent_dim=0"], "config.model.latent_dim=0: expected an integer >= 1"),
    (["--config.no_such_key=1"], "no_such_key"),
    (["--config.model.latent_dim=abc"], "latent_dim"),
    (
      ["--config.objective.name=iwae", "--config.objective.beta=2.0"],
      "config.objective.beta=2.0: does not apply to objective 'iwae'",
    ),
    (
      ["--config.model.name=resnet"],
      "config.model.name='resnet': expected one of cconv, cmlp, conv, dense, hamiltonian, hvae2, mlp",
    ),
    (
      ["--config.optim.batch_size=100000", "--config.data.train_examples=500"],
      "batch_size=100000: larger than the training set",
    ),
    (
      ["--config.data.source=idx", "--config.data.dir=/nonexistent"],
      "data directory /nonexistent: not a directory",
    ),
  ],
)
def test_bad_overrides_give_one_line_and_exit_2(tmp_path, args, message):
  result = cli("train", f"--workdir={tmp_path / 'run'}", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  assert message in lines[0]
  assert not (tmp_path / "run").exists()


def test_missing_command_or_workdir_is_refused(tmp_path):
  assert cli("--workdir", str(tmp_path)).returncode == 2
  result = cli("train")
  assert result.returncode == 2 and "--workdir is required" in result.stderr


def test_workdir_that_is_a_file_is_refused_untouched(tmp_path):
  target = tmp_path / "afile"
  target.write_text("keep me")
  result = cli(
    "train",
    f"--workdir={target}",
    "--config.data.train_examples=256",
    "--config.data.test_examples=64",
  )
  assert result.returncode == 2 and "exists and is not a directory" in result.stderr
  assert target.read_text() == "keep me"


def test_missing_config_file_is_one_line(tmp_path):
  result = cli("train", f"--workdir={tmp_path / 'run'}", f"--config={tmp_path / 'nope.py'}")
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
  assert "nope.py" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sweep", "-h"]])
def test_help_prints_usage_and_exits_0(args):
  result = cli(*args)
  assert result.returncode == 0 and result.stderr == ""
  assert "python -m vae_jax" in result.stdout
  if args[0] == "train":
    assert "model.latent_dim" in result.stdout  # The config keys it takes.


def test_the_module_exits_with_mains_status_and_one_line(tmp_path):
  """A fresh interpreter: the exit status and stderr of ``python -m vae_jax`` itself."""
  result = run_cli("train", f"--workdir={tmp_path / 'run'}", "--config.model.latent_dim=0")
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
  assert "config.model.latent_dim=0: expected an integer >= 1" in result.stderr
  assert not (tmp_path / "run").exists()
