"""Sweeps: study configs, grouping by shape, aggregation, outputs, resume, refusals."""

import csv
import importlib.util
import json

import numpy as np
import pytest
from conftest import run_cli

from vae_jax import sweep

STUDY = '''
import ml_collections
def get_config():
  study = ml_collections.ConfigDict()
  study.name = "tiny"
  study.question = "Does it run?"
  study.base = ml_collections.ConfigDict({"num_epochs": 1, "batch_size": 100})
  study.axes = ml_collections.ConfigDict(AXES)
  study.seeds = 2
  return study
'''


def write_study(tmp_path, axes) -> str:
  path = tmp_path / "study.py"
  path.write_text(STUDY.replace("AXES", repr(axes)))
  return str(path)


def test_aggregate_gives_mean_and_sample_std_per_setting():
  rows = [{"beta": b, "seed": s, "test_loss": t, "test_bce": t - 1, "test_kl": 1.0, "train_loss": t + 1}
          for b, s, t in [(1.0, 1, 100.0), (1.0, 2, 102.0), (1.0, 3, 107.0), (2.0, 1, 90.0)]]
  summary = {s["beta"]: s for s in sweep.aggregate(rows, ["beta"])}
  assert summary[1.0]["n"] == 3 and summary[2.0]["n"] == 1
  np.testing.assert_allclose(summary[1.0]["test_loss_mean"], 103.0)
  np.testing.assert_allclose(summary[1.0]["test_loss_std"], np.std([100.0, 102.0, 107.0], ddof=1))
  assert summary[2.0]["test_loss_std"] == 0.0 and summary[1.0]["test_kl_std"] == 0.0


def test_shape_axes_form_groups_and_the_rest_is_vmapped(tmp_path):
  study = sweep.load_study(write_study(tmp_path, {"latent_dim": [2, 3], "beta": [0.5, 1.0]}))
  groups = sweep.groups(study)
  assert [shape for shape, _ in groups] == [{"latent_dim": 2}, {"latent_dim": 3}]
  assert [(s["beta"], seed) for s, seed in groups[0][1]] == [(0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]


@pytest.mark.parametrize("axes,message", [
    ({"dropout": [0.1]}, "unknown axis or key 'dropout'"),
    ({"seed": [1, 2]}, "'seed' is not an axis"),
    ({"beta": []}, "axis 'beta' has no values"),
])
def test_bad_study_is_refused_naming_the_key(tmp_path, axes, message):
  with pytest.raises(sweep.StudyError, match=message):
    sweep.load_study(write_study(tmp_path, axes))


def test_tiny_sweep_writes_runs_table_plots_and_resumes(tmp_path, small_splits):
  study = sweep.load_study(write_study(tmp_path, {"latent_dim": [2, 3], "beta": [0.5, 1.0]}))
  workdir = tmp_path / "sweep"
  rows = sweep.run_study(study, workdir, small_splits, log=lambda *_: None)
  assert len(rows) == 8
  with open(workdir / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 8 and set(table[0]) == {"latent_dim", "beta", "seed", *sweep.FINAL_METRICS}
  row = next(r for r in table if r["latent_dim"] == "3" and r["beta"] == "0.5" and r["seed"] == "2")
  metrics = [json.loads(l) for l in
             (workdir / "runs" / "beta=0.5,latent_dim=3" / "seed2" / "metrics.jsonl").read_text().splitlines()]
  assert float(row["test_loss"]) == metrics[-1]["test_loss"]
  if importlib.util.find_spec("tensorboardX"):
    from test_train import read_events
    events = read_events(workdir / "runs" / "beta=0.5,latent_dim=3" / "seed2" / "tensorboard")
    tags = {(tag, step) for tag, step, _ in events}
    assert {("test_loss", 1), ("reconstruction", 1), ("sample", 1)} <= tags
  summary = (workdir / "summary.md").read_text()
  # Axes in ConfigDict (alphabetical) order; x_axis picks the plot's x-axis.
  assert summary.count("\n| 0.5 | 2 | 2 |") == 1 and "| beta | latent_dim | seeds |" in summary
  assert (workdir / "test_loss.png").exists() and (workdir / "rate_distortion.png").exists()
  logs = []
  again = sweep.run_study(study, workdir, small_splits, log=logs.append)  # Resume: nothing to train.
  assert again == rows and all("done earlier, skipped" in line for line in logs)


def test_sweep_command_refuses_a_config_without_axes(tmp_path):
  result = run_cli("sweep", f"--workdir={tmp_path / 's'}")
  assert result.returncode == 2 and "default.py: missing key 'name'" in result.stderr
