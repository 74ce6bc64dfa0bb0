"""Shared fixtures: small synthetic MNIST-shaped data, so no test needs the full set."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

# The suite runs on the CPU whatever the host has (its simulated devices, its two processes
# on localhost), and no process grabs an accelerator's memory; subprocesses inherit both.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

# One persistent XLA compilation cache, in-process and in every subprocess (set before jax is
# imported, so both read it), kept between runs of the suite on this machine: compiling the
# suite's small programs is most of its CPU time (a cold run, as on a fresh CI machine, spends
# about twice a warm one's), so a run after a change recompiles only the programs the change
# touched. No number moves: JAX keys an entry by the whole optimized-for program, the compile
# options, the backend and jaxlib's version, and a hit returns the executable a fresh compile
# gives. Thresholds at zero: CPU programs compile fast and small, and would be skipped.
# VAE_JAX_TEST_XLA_CACHE: a directory (default ~/.cache/vae_jax/xla-tests; about 45 MB per
# state of the code; delete it to reclaim the space), or "fresh" for a temporary one removed
# at the end (a cold run). No size limit: JAX's eviction stats every entry on every write,
# which at this suite's ~2,500 entries cost more than the cache saved. A process that imports
# this file under a test run (a subprocess's `from conftest import ...`) keeps the run's.
OWN_COMPILATION_CACHE = False
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _where = os.environ.get("VAE_JAX_TEST_XLA_CACHE", "")
  OWN_COMPILATION_CACHE = _where == "fresh"
  if OWN_COMPILATION_CACHE:
    _where = tempfile.mkdtemp(prefix="vae_jax_tests_xla_")
  elif not _where:
    _cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    _where = os.path.join(_cache_home, "vae_jax", "xla-tests")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _where
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


# Cheaper compiles for every program the suite compiles, in-process and in its subprocesses:
# LLVM at -O0 and XLA CPU's older loop emitters instead of its MLIR fusion emitters. The
# suite's programs are small and run for milliseconds, so compiling them well costs more than
# it saves (measured cold on a 2-core AMD EPYC, two compile-heavy files: 59 s by default,
# 37 s at -O0, 27 s with both). They compute the same functions; the bits of a float sum may
# differ from a default build, so every comparison in the suite is between runs of the suite
# itself or to a tolerance. VAE_JAX_TEST_XLA_OPT=1 keeps XLA's defaults.
CHEAP_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("VAE_JAX_TEST_XLA_OPT") != "1":
  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in CHEAP_COMPILE_FLAGS if f not in _flags])


def pytest_sessionfinish(session, exitstatus):
  if OWN_COMPILATION_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def write_idx(
  path: Path, array: np.ndarray, magic: int | None = None, compress: bool = False
) -> Path:
  """Writes ``array`` (uint8) as an IDX file: the format written out independently of the reader."""
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = 0x0800 | array.ndim
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  content = header + array.tobytes()
  path.write_bytes(gzip.compress(content) if compress else content)
  return path


def synthetic_split(n: int, seed: int, shape=(28, 28, 1)) -> tuple[np.ndarray, np.ndarray]:
  """n random N x H x W x C uint8 images (as every data source yields them) and labels."""
  rs = np.random.RandomState(seed)
  images = rs.randint(0, 256, (n, *shape)).astype(np.uint8)
  images[:, :4] = 0  # Some structure: a black band, as MNIST's borders.
  return images, rs.randint(0, 10, n).astype(np.int64)


@pytest.fixture(scope="session")
def small_splits():
  """300 training examples (two full batches of 128 and a partial one of 44), 100 test."""
  return {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}


@pytest.fixture()
def small_config():
  from vae_jax.configs import default

  config = default.get_config()
  config.optim.num_epochs = 2
  config.run.progress = False
  return config


def write_idx_dir(directory: Path, splits) -> Path:
  """The four MNIST IDX files (gzipped) of ``splits`` in a flat directory."""
  directory.mkdir(parents=True, exist_ok=True)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = splits[split]
    if images.shape[-1] == 1:  # Gray images as MNIST stores them: N x H x W.
      images = images[..., 0]
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, compress=True)
  return directory


@pytest.fixture()
def idx_dir(tmp_path, small_splits):
  """A flat directory of the four IDX files (gzipped) holding the small splits."""
  return write_idx_dir(tmp_path, small_splits)


@pytest.fixture(scope="session")
def session_idx_dir(tmp_path_factory, small_splits):
  """idx_dir shared by a session's tests (read only)."""
  return write_idx_dir(tmp_path_factory.mktemp("idx"), small_splits)


def listing(directory: Path) -> dict[str, str]:
  """Every entry under directory, links not followed: what it is and, for a link, where it points."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = Path(root) / name
      out[str(path.relative_to(directory))] = (
        f"link -> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else "file"
      )
  return out


def tree_bytes(directory: Path) -> dict[str, bytes]:
  """Every file under directory (relative path -> content): to show nothing was changed."""
  return {
    str(p.relative_to(directory)): p.read_bytes()
    for p in sorted(Path(directory).rglob("*"))
    if p.is_file()
  }


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
  """``python -m vae_jax ARGS`` in a fresh process: for what only a process shows (a kill, a
  signal, two processes at once, the exit of the interpreter itself)."""
  return subprocess.run(
    [sys.executable, "-m", "vae_jax", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=cwd,
  )


def run_cli_fresh(*commands: list) -> list[CliResult]:
  """Several ``python -m vae_jax`` commands, one after the other, in one fresh process (a
  process's first command is the one that shows what a fresh process does)."""
  code = (
    "import contextlib, io, json, sys\n"
    "from vae_jax.__main__ import main\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "  out, err = io.StringIO(), io.StringIO()\n"
    "  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
    "    status = main(argv)\n"
    "  print(json.dumps([status, out.getvalue(), err.getvalue()]), file=sys.__stdout__)\n"
  )
  argv = json.dumps([[str(a) for a in c] for c in commands])
  done = subprocess.run(
    [sys.executable, "-c", code, argv], capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr
  results = [CliResult(*json.loads(l)) for l in done.stdout.splitlines() if l.startswith("[")]
  assert len(results) == len(commands), done.stdout
  return results


class CliResult(NamedTuple):
  returncode: int
  stdout: str
  stderr: str


def cli(*args) -> CliResult:
  """``python -m vae_jax ARGS`` through the same entry point in this process (no interpreter to
  start, no jax to import, the programs compiled once): for outputs, files and one-line errors."""
  from vae_jax import __main__ as cli_module

  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      status = cli_module.main([str(a) for a in args])
    except SystemExit as e:  # Whatever the entry point would exit with.
      status = e.code if isinstance(e.code, int) else 1
  return CliResult(status, out.getvalue(), err.getvalue())


def train_args(workdir, idx_dir, *extra) -> list[str]:
  """A 2-epoch CLI training run on an IDX directory, no progress bar or images."""
  return [
    "train",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.dir={idx_dir}",
    "--config.optim.num_epochs=2",
    "--config.run.progress=False",
    "--config.run.save_images=False",
    *extra,
  ]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, session_idx_dir):
  """Workdir of a finished 2-epoch CLI run on the small IDX data (read only)."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  result = cli(*train_args(workdir, session_idx_dir))
  assert result.returncode == 0, result.stderr
  return workdir


def make_model(overrides: dict | None = None, image_shape=(28, 28, 1), num_train: int = 300):
  """(state, keys, objective_fn, hparams) of one fresh model: the default config with dotted
  overrides, for data of that shape; hparams are those of step 0 with num_train examples."""
  from vae_jax import config as config_lib, group as group_lib

  config = config_lib.from_flat(overrides or {})
  x = np.broadcast_to(np.zeros((1,) * 4, np.uint8), (num_train, *image_shape))
  group = group_lib.make_group(config, {"train": (x, None), "test": (x, None)})
  states, keys = group_lib.create_states(group)
  return (
    group_lib.unstack(states),
    group_lib.unstack(keys),
    group.objective.fn,
    group_lib.unstack(group.hparams),
  )


def k_model_run():
  """Four vmapped models (seeds 1-4, betas 1, 0.5, 2, 1) for one epoch on the small splits."""
  import tempfile

  from vae_jax import config as config_lib, training

  config = config_lib.from_flat(
    {
      "optim.num_epochs": 1,
      "run.progress": False,
      "run.save_images": False,
      "run.models_strategy": "vmap",
    }
  )
  splits = {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}
  overrides = [{"seed": s, "objective.beta": b} for s, b in zip((1, 2, 3, 4), (1.0, 0.5, 2.0, 1.0))]
  return training.train_models(
    config, splits, overrides, tempfile.mkdtemp(), [None] * 4, log=lambda _: None
  )


def run_python_json(code: str, devices: int | None = None):
  """Runs code in a fresh python (with ``devices`` simulated CPU devices) in tests/; the JSON
  its last stdout line holds."""
  import json
  import textwrap

  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = (
      f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    )
  result = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
    cwd=os.path.dirname(__file__),
  )
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])
