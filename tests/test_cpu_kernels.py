"""config.run.cpu_kernels: resolved before the backend starts, recorded, checked on resume."""

import collections
import contextlib
import io
import json

import numpy as np
import pytest

from vae_jax import checkpoint, config as config_lib, cpu_kernels, training
from vae_jax.registry import ConfigError

AMD = {"vendor": "AuthenticAMD", "model": "AMD EPYC", "flags": "avx2 avx512f"}


def one_epoch_config(**run):
  from vae_jax.configs import default

  config = default.get_config()
  config.optim.num_epochs = 1
  config.run.update(progress=False, save_images=False, tensorboard=False, **run)
  return config


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, small_splits):
  """(workdir, log lines) of a 1-epoch run with run.cpu_kernels = 'auto' (the default)."""
  workdir, out = tmp_path_factory.mktemp("kernels") / "run", io.StringIO()
  with contextlib.redirect_stdout(out):
    training.train_and_evaluate(one_epoch_config(), workdir, small_splits)
  return workdir, out.getvalue().splitlines()


def test_auto_says_what_it_chose_at_start_up(auto_run):
  _, lines = auto_run
  chosen, why = cpu_kernels.resolve("auto")
  (line,) = [l for l in lines if l.startswith("CPU kernels:")]
  assert line == f"CPU kernels: {chosen} ({why})" and why.startswith("auto:")


def test_auto_chooses_by_cpu_and_follows_xla_flags():
  assert cpu_kernels.resolve("auto", "", AMD) == ("xla", cpu_kernels.resolve("auto", "", AMD)[1])
  assert "AMD EPYC" in cpu_kernels.resolve("auto", "", AMD)[1]
  unknown = {"vendor": "SomeVendor", "model": "X1", "flags": ""}
  assert cpu_kernels.resolve("auto", "", unknown)[0] == "xla"
  assert "not measured" in cpu_kernels.resolve("auto", "", unknown)[1]
  assert cpu_kernels.resolve("auto", "--xla_cpu_use_xnnpack=true", AMD)[0] == "xnnpack"
  assert cpu_kernels.resolve("onednn", "", AMD)[0] == "onednn"


def test_the_resolved_path_is_recorded_in_the_checkpoint(auto_run):
  workdir, _ = auto_run
  _, _, _, meta = training.restore_run(workdir)
  assert meta["config"]["run.cpu_kernels"] == cpu_kernels.resolve("auto")[0]
  # config.json keeps what the user asked for.
  assert json.loads((workdir / "config.json").read_text())["run"]["cpu_kernels"] == "auto"


def test_resume_on_other_kernels_is_refused_in_one_line(
  auto_run, tmp_path, small_splits, monkeypatch
):
  import shutil

  workdir = tmp_path / "run"
  shutil.copytree(auto_run[0], workdir)
  # The flag in XLA_FLAGS as a process started with it would have it (this backend is running).
  monkeypatch.setenv("XLA_FLAGS", cpu_kernels.FLAGS["xnnpack"])
  config = one_epoch_config(cpu_kernels="xnnpack")
  config.optim.num_epochs = 2
  with pytest.raises(checkpoint.CheckpointError) as e:
    training.train_and_evaluate(config, workdir, small_splits)
  assert "\n" not in str(e.value) and "run.cpu_kernels: 'xla' -> 'xnnpack'" in str(e.value)


def test_runs_saved_before_the_setting_resume_on_xla_only():
  assert config_lib.differences({}, {"run.cpu_kernels": "xla"}) == []
  assert config_lib.differences({}, {"run.cpu_kernels": "onednn"}) == [
    "run.cpu_kernels: 'xla' -> 'onednn'"
  ]


def test_configure_sets_the_flag_before_the_backend_starts(monkeypatch):
  monkeypatch.setattr(cpu_kernels, "backend_started", lambda: False)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert cpu_kernels.configure("onednn", env)[0] == "onednn"
  assert env["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=2",
    cpu_kernels.FLAGS["onednn"],
  ]


def test_configure_refuses_kernels_the_started_backend_does_not_run(monkeypatch):
  monkeypatch.setattr(cpu_kernels, "backend_started", lambda: True)
  with pytest.raises(ConfigError, match=r"config.run.cpu_kernels='xnnpack' .* already started"):
    cpu_kernels.configure("xnnpack", {})
  with pytest.raises(ConfigError, match=r"XLA_FLAGS=.* asks for onednn"):
    cpu_kernels.configure("xla", {"XLA_FLAGS": cpu_kernels.FLAGS["onednn"]})


def test_unknown_kernels_are_refused():
  config = one_epoch_config(cpu_kernels="mkl")
  with pytest.raises(ConfigError, match="config.run.cpu_kernels='mkl': expected one of auto, xla"):
    config_lib.parse(config)


@pytest.mark.parametrize(
  "name, dims",
  [
    ("reference", [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]),
    ("burda", [(784, 200), (200, 200), (200, 50), (200, 50), (50, 200), (200, 200), (200, 784)]),
  ],
)
def test_the_kernel_benchmark_times_the_products_the_step_holds(name, dims):
  """experiments/cpu_kernels.py lists the step's matmuls from its jaxpr: one forward, one
  weight gradient and (but for the data's) one input gradient per Dense layer, each
  (m, k) x (k, n) in the orientation the program computes it, operands as stored."""
  from experiments import cpu_kernels as bench

  config = bench.config_of(name)
  batch = config.optim.batch_size
  products = bench.step_matmuls(config)
  by_layout = collections.Counter()
  for s in products:
    by_layout[s["layout"]] += s["count"]
    a, b = bench.oriented(*(np.zeros(shape) for shape in bench.stored_shapes(s)), s["layout"])
    assert a.shape == (s["m"], s["k"]) and b.shape == (s["k"], s["n"])
  layers = len(dims)
  assert by_layout == {"nn": layers, "tn": layers, "nt": layers - 1}  # No gradient of the data.
  forward = sorted(
    (s["m"], s["k"], s["n"]) for s in products for _ in range(s["count"]) if s["layout"] == "nn"
  )
  assert forward == sorted((batch, i, o) for i, o in dims)
  multiply_adds = sum(s["m"] * s["k"] * s["n"] * s["count"] for s in products)
  assert multiply_adds == batch * (3 * sum(i * o for i, o in dims) - 784 * dims[0][1])


def test_the_kernel_report_bounds_each_config_by_its_fastest_path_per_product(capsys):
  """experiments.cpu_kernels --report: the tables of a saved run, the bound the sum of each
  product's fastest path x its count x steps per epoch, the ratios over the median of epochs
  2..N; the same tables a measuring run prints."""
  from experiments import cpu_kernels as bench

  shape = lambda m, count: {"m": m, "k": 2, "n": 3, "layout": "nn", "count": count, "what": []}
  shapes = {"reference": [shape(1, 1), shape(2, 2)], "burda": [shape(3, 1)]}
  per_path = {"xla": [10.0, 4.0], "xnnpack": [8.0, 5.0], "onednn": [9.0, 6.0]}
  epoch = lambda *s: {"epoch_seconds": list(s)}
  results = {
    "machine": {"model": "M", "vendor": "V", "cores": 2, "cpu_flags": ["avx2"], "jax": "0"},
    "shapes": shapes,
    "kernels": {p: {"reference": t, "burda": [t[0]]} for p, t in per_path.items()},
    "outside": {"reference": {"torch": [20.0, 3.0], "numpy": [30.0, 30.0]}, "burda": {}},
    "epochs": {
      f"{c}_{p}": epoch(9.0, 1.0, 3.0, 2.0) for c in ("reference", "burda") for p in per_path
    },
    "train": epoch(9.0, 2.0, 1.0, 3.0),
    "torch_preloaded": epoch(9.0, 6.0),
  }
  bench.report(results)
  steps = bench.steps_per_epoch("reference")
  bound = (8.0 + 3.0 * 2) * steps / 1e6  # xnnpack's 8 us, torch's 3 us twice.
  assert results["bounds"]["reference"]["best_seconds"] == pytest.approx(bound)
  assert results["bounds"]["reference"]["per_path_seconds"]["xla"] == pytest.approx(
    18 * steps / 1e6
  )
  assert results["ratios"]["train_over_bound"] == pytest.approx(2.0 / bound)
  assert results["ratios"]["torch_preloaded_over_train"] == pytest.approx(6.0 / 2.0)
  out = capsys.readouterr().out
  assert "| per step | | | | 18 | 18 | 21 | 26 | 90 | 14 |" in out
  assert "| reference | 2.000 (1.000) | 2.000 (1.000) | 2.000 (1.000) |" in out
