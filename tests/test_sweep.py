"""Sweeps: study configs, grouping by shape, aggregation, outputs, resume, refusals."""

import csv
import importlib.util
import json

import numpy as np
import pytest
from conftest import cli

from vae_jax import sweep

STUDY = """
from vae_jax import sweep
def get_config():
  return sweep.make_study("tiny", "Does it run?", AXES, seeds=2,
                          base={"optim.num_epochs": 1, "optim.batch_size": 100})
"""


def write_study(tmp_path, axes) -> str:
  path = tmp_path / "study.py"
  path.write_text(STUDY.replace("AXES", repr(axes)))
  return str(path)


def test_aggregate_gives_mean_and_sample_std_per_setting():
  rows = [
    {
      "objective.beta": b,
      "seed": s,
      "test_loss": t,
      "test_bce": t - 1,
      "test_kl": 1.0,
      "train_loss": t + 1,
    }
    for b, s, t in [(1.0, 1, 100.0), (1.0, 2, 102.0), (1.0, 3, 107.0), (2.0, 1, 90.0)]
  ]
  summary = {s["objective.beta"]: s for s in sweep.aggregate(rows, ["objective.beta"])}
  assert summary[1.0]["n"] == 3 and summary[2.0]["n"] == 1
  np.testing.assert_allclose(summary[1.0]["test_loss_mean"], 103.0)
  np.testing.assert_allclose(summary[1.0]["test_loss_std"], np.std([100.0, 102.0, 107.0], ddof=1))
  assert summary[2.0]["test_loss_std"] == 0.0 and summary[1.0]["test_kl_std"] == 0.0


def test_shape_axes_form_groups_and_the_rest_is_vmapped(tmp_path):
  study = sweep.load_study(
    write_study(tmp_path, {"model.latent_dim": [2, 3], "objective.beta": [0.5, 1.0]})
  )
  groups = sweep.groups(study)
  assert [shape for shape, _ in groups] == [{"model.latent_dim": 2}, {"model.latent_dim": 3}]
  assert [(s["objective.beta"], seed) for s, seed in groups[0][1]] == [
    (0.5, 1),
    (0.5, 2),
    (1.0, 1),
    (1.0, 2),
  ]
  # The objective decides what is batched: beta_tcvae's TC weight is, its likelihood is not.
  study = sweep.load_study(
    write_study(
      tmp_path,
      {
        "objective.name": ["beta_tcvae"],
        "objective.tc_weight": [1.0, 4.0],
        "objective.likelihood": ["bernoulli", "gaussian"],
      },
    )
  )
  assert [shape for shape, _ in sweep.groups(study)] == [
    {"objective.name": "beta_tcvae", "objective.likelihood": "bernoulli"},
    {"objective.name": "beta_tcvae", "objective.likelihood": "gaussian"},
  ]


@pytest.mark.parametrize(
  "axes,message",
  [
    ({"dropout": [0.1]}, "unknown axis or key 'dropout'"),
    ({"seed": [1, 2]}, "'seed' is not an axis"),
    ({"objective.beta": []}, "axis 'objective.beta': expected a non-empty list"),
    ({"objective.beta": 0.5}, "axis 'objective.beta': expected a non-empty list"),
    (
      {"objective.free_bits": [0.0, 1.0], "objective.name": ["iwae"]},
      "setting objective.free_bits=1.0,objective.name=iwae: config.objective.free_bits=1.0: does not apply",
    ),
  ],
)
def test_bad_study_is_refused_naming_the_key(tmp_path, axes, message):
  with pytest.raises(sweep.StudyError, match=message):
    sweep.load_study(write_study(tmp_path, axes))


def test_tiny_sweep_writes_runs_table_plots_and_resumes(tmp_path, small_splits):
  study = sweep.load_study(
    write_study(tmp_path, {"model.latent_dim": [2, 3], "objective.beta": [0.5, 1.0]})
  )
  workdir = tmp_path / "sweep"
  rows = sweep.run_study(study, workdir, small_splits, log=lambda *_: None)
  assert len(rows) == 8
  with open(workdir / "results.csv") as f:
    table = list(csv.DictReader(f))
  run_dir = workdir / "runs" / "model.latent_dim=3,objective.beta=0.5" / "seed2"
  metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
  # Every metric of the objective's records, and nothing else, is a column.
  assert len(table) == 8 and list(table[0]) == [
    "model.latent_dim",
    "objective.beta",
    "seed",
    *sorted((k for k in metrics[-1] if k.startswith("test_")), key=list(metrics[-1]).index),
    *[
      k
      for k in metrics[-1]
      if k.startswith("train_") and k != "train_examples" and k != "train_seconds"
    ],
  ]
  row = next(
    r
    for r in table
    if r["model.latent_dim"] == "3" and r["objective.beta"] == "0.5" and r["seed"] == "2"
  )
  assert float(row["test_loss"]) == metrics[-1]["test_loss"]
  if importlib.util.find_spec("tensorboardX"):
    from test_train import read_events

    events = read_events(run_dir / "tensorboard")
    tags = {(tag, step) for tag, step, _ in events}
    assert {("test_loss", 1), ("reconstruction", 1), ("sample", 1)} <= tags
  summary = (workdir / "summary.md").read_text()
  # Axes in ConfigDict (alphabetical) order; x_axis picks the plot's x-axis.
  assert (
    summary.count("\n| 3 | 0.5 | 2 |") == 1
    and "| model.latent_dim | objective.beta | seeds |" in summary
  )
  # The plots need matplotlib (the experiments extra); without it the sweep writes none, and
  # test_a_study_of_seeds_alone_has_its_table_and_plot says so as a skip.
  plots = [workdir / "test_loss.png", workdir / "rate_distortion.png"]
  has_matplotlib = importlib.util.find_spec("matplotlib") is not None
  assert [p.exists() for p in plots] == [has_matplotlib] * 2
  logs = []
  again = sweep.run_study(
    study, workdir, small_splits, log=logs.append
  )  # Resume: nothing to train.
  assert again == rows and len(logs) == 2 and all("done earlier" in line for line in logs)
  # A changed axis value is another group (matched by settings, not position): it trains.
  changed = sweep.load_study(
    write_study(tmp_path, {"model.latent_dim": [2, 4], "objective.beta": [0.5, 1.0]})
  )
  logs = []
  rows = sweep.run_study(changed, workdir, small_splits, log=logs.append)
  assert "done earlier" in logs[0] and "models in one program" in logs[1]
  assert {r["model.latent_dim"] for r in rows} == {2, 4}


def test_a_study_of_seeds_alone_has_its_table_and_plot(tmp_path, small_splits):
  pytest.importorskip(
    "matplotlib", reason="a sweep's plots need matplotlib (the experiments extra)"
  )
  study = sweep.load_study(write_study(tmp_path, {}))
  rows = sweep.run_study(study, tmp_path / "sweep", small_splits, log=lambda *_: None)
  losses = [r["test_loss"] for r in rows]
  assert [r["seed"] for r in rows] == [1, 2] and (tmp_path / "sweep" / "test_loss.png").exists()
  summary = (tmp_path / "sweep" / "summary.md").read_text()
  assert f"| 2 | {np.mean(losses):.2f} +- {np.std(losses, ddof=1):.2f} |" in summary


def test_sweep_command_refuses_a_config_without_axes(tmp_path):
  result = cli("sweep", f"--workdir={tmp_path / 's'}")
  assert result.returncode == 2 and "default.py: missing key 'name'" in result.stderr
