"""The experiment scripts start: they import, parse their flags and document themselves.

Their full runs need the whole of MNIST and minutes each (README, Results); here each
script is only started with --help, which imports jax and vae_jax from the experiments
directory, where compression.py must not be taken for the standard library's
`compression` package that jax probes for.
"""

import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


@pytest.mark.parametrize("script", ["likelihood", "compression", "denoising", "anomaly", "generation"])
def test_application_script_starts_and_documents_its_command(script):
  result = subprocess.run([sys.executable, str(EXPERIMENTS / f"{script}.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "--workdir" in result.stdout and "--epochs" in result.stdout
  doc = (EXPERIMENTS / f"{script}.py").read_text().split('"""')[1]
  assert f"experiments/{script}.py --workdir runs/{script}" in doc  # The command, in the docstring.


def test_compression_script_refuses_to_be_imported_as_a_module():
  result = subprocess.run([sys.executable, "-c", "import compression"], cwd=EXPERIMENTS,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "is a script, not the 'compression' module" in result.stderr
