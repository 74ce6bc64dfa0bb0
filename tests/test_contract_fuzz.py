"""The CLI's contract, on generated hostile arguments: every command's path and number
arguments are drawn from families no run can use (names over the file system's limit,
non-UTF-8 bytes, an existing file, directory, symbolic link or dangling link in the way, huge
and negative integers, NaN and infinite floats, empty strings). Each draw must end with a
status other than 0, exactly one ``vae_jax: error:`` line and no traceback, and no file
changed anywhere in the sandbox: neither the user's files around it nor the trained run.

In-process (main(argv)) and bounded (hypothesis, a few dozen draws per command family): no
draw trains, so each is refused before a program is compiled.
"""

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from conftest import listing, tree_bytes
from hypothesis import HealthCheck, given, settings, strategies as st
from test_hostile import train

from vae_jax import __main__ as cli

FUZZ = settings(
  max_examples=20,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def run_contract(argv: list[str], *watched: Path) -> None:
  """main(argv) refuses in one line, with nothing under the watched directories changed."""
  before = [(listing(w), tree_bytes(w)) for w in watched]
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    status = cli.main(argv)
  lines = err.getvalue().strip().splitlines()
  assert status != 0, (argv, lines)
  assert len(lines) == 1 and lines[0].startswith("vae_jax: error:"), (argv, lines)
  assert "Traceback" not in err.getvalue(), (argv, lines)
  assert [(listing(w), tree_bytes(w)) for w in watched] == before, argv


# ---- the hostile families ----

# A path is made in a sandbox holding the user's files: <sandbox>/users/ (links point there).
PATH_FAMILIES = (
  "too long",
  "non-UTF-8",
  "file in the way",
  "directory in the way",
  "symlink",
  "dangling symlink",
  "empty",
)


@st.composite
def hostile_paths(draw, families=PATH_FAMILIES, suffix=""):
  """(family, a function sandbox -> the path argument, made there)."""
  family = draw(st.sampled_from(families))
  length = draw(st.integers(256, 400))
  raw = draw(st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b))  # Never valid UTF-8.

  def make(sandbox: Path) -> str:
    users = sandbox / "users"
    if family == "too long":
      return str(sandbox / ("x" * length)) + suffix
    if family == "non-UTF-8":
      return os.fsdecode(
        os.fsencode(str(sandbox))
        + b"/d-"
        + raw.replace(b"/", b"_").replace(b"\0", b"_")
        + b"/name"
        + os.fsencode(suffix)
      )
    if family == "empty":
      return ""
    path = sandbox / f"in-the-way{suffix}"
    if family == "file in the way":
      path.write_text("the user's")
    elif family == "directory in the way":
      path.mkdir()
      (path / "keep.txt").write_text("the user's")
    elif family == "symlink":
      path.symlink_to(users / "file.txt")
    else:
      path.symlink_to(users / "nothing")
    return str(path)

  return family, make


HUGE_OR_NEGATIVE = st.one_of(
  st.integers(min_value=2**63, max_value=2**200), st.integers(min_value=-(2**200), max_value=-1)
)
NOT_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "-1e999", "1e999"])
NOT_A_NUMBER = st.sampled_from(["", " ", "1.5e", "0x", "\udcff"])


def sandbox():
  """A temporary directory with the user's files (what links point to)."""
  directory = tempfile.TemporaryDirectory()
  root = Path(directory.name)
  (root / "users").mkdir()
  (root / "users" / "file.txt").write_text("the user's, outside any workdir")
  return directory, root


# ---- train and sweep: refused before the workdir exists ----


@FUZZ
@given(path=hostile_paths(families=[f for f in PATH_FAMILIES if f != "directory in the way"]))
def test_train_refuses_a_hostile_workdir(path, session_idx_dir):
  directory, root = sandbox()
  with directory:
    run_contract(train(path[1](root), session_idx_dir), root, session_idx_dir)


@FUZZ
@given(path=hostile_paths(families=[f for f in PATH_FAMILIES if f != "empty"]))
def test_train_refuses_a_hostile_data_directory(path, session_idx_dir):
  directory, root = sandbox()
  with directory:
    run_contract(train(root / "run", path[1](root)), root)
    assert not (root / "run").exists()


INT_KEYS = [
  "seed",
  "optim.num_epochs",
  "optim.batch_size",
  "model.latent_dim",
  "run.keep_checkpoints",
  "data.train_examples",
  "objective.kl_warmup_epochs",
  "run.progress_chunks",
]
FLOAT_KEYS = [
  "optim.learning_rate",
  "optim.eps",
  "objective.beta",
  "run.checkpoint_every_seconds",
  "optim.b1",
]


@FUZZ
@given(
  case=st.one_of(
    st.tuples(st.sampled_from(INT_KEYS), HUGE_OR_NEGATIVE.map(str)),
    st.tuples(st.sampled_from(INT_KEYS + FLOAT_KEYS), NOT_A_NUMBER),
    st.tuples(st.sampled_from(FLOAT_KEYS), NOT_FINITE),
  )
)
def test_train_refuses_a_hostile_number(case, session_idx_dir):
  key, value = case
  directory, root = sandbox()
  with directory:
    run_contract(train(root / "run", session_idx_dir, f"--config.{key}={value}"), root)
    assert not (root / "run").exists()


@FUZZ
@given(
  path=hostile_paths(families=[f for f in PATH_FAMILIES if f != "directory in the way"]),
  where=st.sampled_from(["workdir", "config"]),
)
def test_sweep_refuses_a_hostile_workdir_or_study(path, where, session_idx_dir):
  directory, root = sandbox()
  with directory:
    study = root / "study.py"
    study.write_text(
      "from vae_jax import sweep\ndef get_config():\n  return sweep.make_study("
      "'s', '?', {'objective.beta': [1.0]}, seeds=1, base={'optim.num_epochs': 1, "
      f"'data.source': 'idx', 'data.dir': {str(session_idx_dir)!r}}})\n"
    )
    value = path[1](root)
    if where == "config" and path[0] == "symlink":  # A link to a file that is no study.
      os.unlink(value)
      os.symlink(root / "users" / "file.txt", value)
    args = {"workdir": root / "sweep", "config": study, where: value}
    run_contract(["sweep", f"--config={args['config']}", f"--workdir={args['workdir']}"], root)


# ---- the commands that read a trained run: --workdir, --out and the numbers ----

READ_COMMANDS = {
  "sample": ".png",
  "reconstruct": ".png",
  "encode": ".npz",
  "evaluate": None,
  "likelihood": None,
}


@FUZZ
@given(command=st.sampled_from(list(READ_COMMANDS)), path=hostile_paths())
def test_reading_commands_refuse_a_hostile_workdir(command, path):
  directory, root = sandbox()
  with directory:
    out = [f"--out={root / 'out'}{READ_COMMANDS[command]}"] if READ_COMMANDS[command] else []
    run_contract([command, f"--workdir={path[1](root)}", *out], root)


@FUZZ
@given(command=st.sampled_from(["sample", "reconstruct", "encode"]), path=st.data())
def test_writing_commands_refuse_a_hostile_out(command, path, trained_run):
  # A regular file at --out is replaced (the user named it): not hostile, not drawn.
  family, make = path.draw(
    hostile_paths(
      families=[f for f in PATH_FAMILIES if f != "file in the way"], suffix=READ_COMMANDS[command]
    )
  )
  directory, root = sandbox()
  with directory:
    run_contract([command, f"--workdir={trained_run}", f"--out={make(root)}"], root, trained_run)


@FUZZ
@given(
  case=st.one_of(
    st.tuples(
      st.sampled_from(["sample", "likelihood"]), st.just("seed"), HUGE_OR_NEGATIVE.map(str)
    ),
    st.tuples(
      st.sampled_from(["sample", "reconstruct", "likelihood"]),
      st.just("num"),
      HUGE_OR_NEGATIVE.map(str),
    ),
    st.tuples(st.just("likelihood"), st.just("num_samples"), HUGE_OR_NEGATIVE.map(str)),
    st.tuples(
      st.sampled_from(list(READ_COMMANDS)),
      st.sampled_from(["num", "seed", "num_samples"]),
      st.one_of(NOT_A_NUMBER, NOT_FINITE),
    ),
    st.tuples(
      st.sampled_from(list(READ_COMMANDS)),
      st.just("checkpoint"),
      st.one_of(HUGE_OR_NEGATIVE.map(str), NOT_FINITE, NOT_A_NUMBER),
    ),
  )
)
def test_reading_commands_refuse_a_hostile_number(case, trained_run):
  command, flag, value = case
  directory, root = sandbox()
  with directory:
    out = [f"--out={root / 'out'}{READ_COMMANDS[command]}"] if READ_COMMANDS[command] else []
    run_contract(
      [command, f"--workdir={trained_run}", *out, f"--{flag}={value}"], root, trained_run
    )
    assert os.listdir(root) == ["users"]


# ---- prepare: the IDX directory it builds from ----


@FUZZ
@given(
  path=hostile_paths(families=[f for f in PATH_FAMILIES if f != "empty"]),
  dataset=st.sampled_from(["mnist", "fashion_mnist"]),
)
def test_prepare_refuses_a_hostile_idx_directory(path, dataset):
  pytest.importorskip("tensorflow_datasets")
  directory, root = sandbox()
  with directory:
    run_contract(
      ["prepare", f"--dataset={dataset}", f"--from={path[1](root)}", f"--tfds_dir={root / 'tfds'}"],
      root,
    )
    assert not (root / "tfds").exists()


# ---- the examples that leaked before (issue 26), each as the contract says ----

EXAMPLES = {
  "a data directory name over the limit": (
    lambda root, run: train(root / "run", "x" * 300),
    "--config.data.dir xxx",
    "ENAMETOOLONG",
  ),
  "an --out name over the limit": (
    lambda root, run: ["sample", f"--workdir={run}", f"--out={root / ('x' * 300)}.png"],
    "--out ",
    "ENAMETOOLONG",
  ),
  "a seed past 64 bits": (
    lambda root, run: ["sample", f"--workdir={run}", f"--out={root / 's.png'}", f"--seed={2**70}"],
    f"--seed={2**70}: expected an integer in [0, 2**32)",
    "",
  ),
  "a config file returning a number, with an override": (
    lambda root, run: [
      "train",
      f"--workdir={root / 'run'}",
      f"--config={number_config(root)}",
      "--config.seed=2",
    ],
    "get_config() returned a int, expected an ml_collections.ConfigDict",
    "",
  ),
}


def number_config(root: Path) -> Path:
  (root / "c.py").write_text("def get_config():\n  return 3\n")
  return root / "c.py"


@pytest.mark.parametrize("case", EXAMPLES)
def test_each_example_that_leaked_is_one_line_naming_the_flag(case, trained_run):
  make, expected, errno_name = EXAMPLES[case]
  directory, root = sandbox()
  with directory:
    argv = [str(a) for a in make(root, trained_run)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      status = cli.main(argv)
    lines = err.getvalue().strip().splitlines()
    assert status == 2 and len(lines) == 1 and expected in lines[0] and errno_name in lines[0], (
      lines
    )
    assert set(os.listdir(root)) <= {"users", "c.py"}  # Nothing created.
    assert not (root / "run").exists()
