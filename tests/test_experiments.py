"""The experiments are a package: each module starts, parses its flags and documents itself.

Their full runs need the whole of MNIST and minutes each (README, Results); here each is
started with --help as ``python -m experiments.<name>`` does it (runpy, in this process: the
module runs as __main__, imports jax and vae_jax, parses its flags and exits).
"""

import contextlib
import io
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliResult

ROOT = Path(__file__).parent.parent


def run_module(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", f"experiments.{name}", *args],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
  )


def run_module_here(name: str, *args: str) -> CliResult:
  """``python -m experiments.NAME ARGS`` in this process: (exit status, stdout, stderr)."""
  out, err, argv = io.StringIO(), io.StringIO(), sys.argv
  sys.argv = [f"experiments/{name}.py", *args]
  status = 0
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      runpy.run_module(f"experiments.{name}", run_name="__main__", alter_sys=True)
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = argv
  return CliResult(status, out.getvalue(), err.getvalue())


@pytest.mark.parametrize(
  "script",
  [
    "likelihood",
    "dimensionality",
    "denoising",
    "anomaly",
    "generation",
    "fashion",
    "augmentation",
    "semisupervised",
    "compression",
  ],
)
def test_application_script_starts_and_documents_its_command(script):
  result = run_module_here(script, "--help")
  assert result.returncode == 0, result.stderr
  assert "--workdir" in result.stdout and "--epochs" in result.stdout
  doc = (ROOT / "experiments" / f"{script}.py").read_text().split('"""')[1]
  assert (
    f"python -m experiments.{script} --workdir runs/{script}" in doc
  )  # The command, in the docstring.


def test_no_experiment_edits_sys_path():
  for path in (ROOT / "experiments").glob("*.py"):
    assert "sys.path" not in path.read_text(), path.name


@pytest.fixture
def registry_restored():
  """The objectives registered by a test (as __main__ modules do) are gone after it."""
  from vae_jax import objectives

  before = dict(objectives.REGISTRY.entries)
  yield
  objectives.REGISTRY.entries.clear()
  objectives.REGISTRY.entries.update(before)


def test_an_objective_registered_outside_the_package_runs_a_sweep(tmp_path, registry_restored):
  result = run_module_here(
    "custom_objective",
    "--workdir",
    str(tmp_path),
    "--epochs",
    "1",
    "--train-examples",
    "300",
    "--test-examples",
    "100",
  )
  assert result.returncode == 0, result.stderr
  import csv

  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 and {r["objective.mmd_weight"] for r in rows} == {"1.0", "10.0", "100.0"}
  assert all(float(r["train_mmd"]) >= 0 for r in rows)  # Its own metric, in every output.
  assert "train mmd" in (tmp_path / "summary.md").read_text()


# The accelerator check's sections, in three groups of about equal cost (each a test of its own,
# so the suite's workers share them).
DEVICE_CHECK_GROUPS = {
  "epochs": ("machine", "matmul", "reference_epoch"),
  "models": ("batch_sizes", "vmapped_models", "iwae"),
  "runs": ("end_to_end", "determinism"),
}
DEVICE_CHECK_TABLES = {
  "matmul": "| matmul 256^2 | TFLOP/s |",
  "reference_epoch": "| reference epoch |",
  "batch_sizes": "| batch | s/epoch |",
  "vmapped_models": "| vmapped K |",
  "end_to_end": "| train, 3 epochs |",
  "iwae": "| IWAE K = 64",
  "determinism": "**Determinism**",
}


def test_device_check_groups_are_every_section_once():
  from experiments.device_check import SECTIONS

  names = [n for group in DEVICE_CHECK_GROUPS.values() for n in group]
  assert sorted(names) == sorted(SECTIONS) and len(names) == len(set(names))


@pytest.mark.parametrize("group", list(DEVICE_CHECK_GROUPS))
def test_device_check_runs_every_section_with_tiny_settings(group, tmp_path):
  """The accelerator check, as one command (``--sections`` a third of it per test): every
  section measured and tabled on the CPU."""
  import json

  out = tmp_path / "check.json"
  sections = DEVICE_CHECK_GROUPS[group]
  result = run_module_here(
    "device_check", "--tiny", "--out", str(out), "--sections", ",".join(sections)
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  results = json.loads(out.read_text())
  for name in sections:
    assert "error" not in results[name] and results[name]["section_seconds"] > 0, name
    if name in DEVICE_CHECK_TABLES:
      assert DEVICE_CHECK_TABLES[name] in result.stdout, name
  if "machine" in sections:
    assert results["machine"]["backend"] == "cpu" and "flax" in results["machine"]["versions"]
  if "matmul" in sections:
    assert set(results["matmul"]["tflops"]) == {"bf16", "f32_default", "f32_highest"}
    assert all(v > 0 for v in results["matmul"]["tflops"].values())
  if "reference_epoch" in sections:
    rows = results["reference_epoch"]["rows"]
    assert set(rows) == {
      "f32_highest",
      "f32_default",
      "bf16",
      "f32_highest_progress_on",
      "loop_of_jitted_steps",
    }
    # Progress on or off, the same numbers (the chunks are one program's sums).
    assert rows["f32_highest_progress_on"]["train_loss"] == rows["f32_highest"]["train_loss"]
  if "vmapped_models" in sections:
    assert list(results["vmapped_models"]["rows"]) == ["1", "2"]
  if "determinism" in sections:
    assert results["determinism"]["equal"] is True
