"""The user's files are never touched: vae_jax replaces or removes only what it can show it
wrote (a regular file of a name it writes, or its own directory, in a directory whose
config.json marks a vae_jax run). Anything else under an output's name (a directory where a
file goes, a symbolic link, dangling or not, any entry of a directory that is not a run) is
refused in one line naming it, before anything is written. In-process (main(argv))."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import listing, synthetic_split, train_args, tree_bytes, write_idx_dir

from vae_jax import __main__ as cli


def run_main(capsys, argv):
  status = cli.main([str(a) for a in argv])
  return status, capsys.readouterr().err.strip().splitlines()


def snapshot(directory: Path):
  return listing(directory), tree_bytes(directory)


def put(kind: str, path: Path, outside: Path) -> None:
  """A user's entry of that kind at path; links point into ``outside`` (the user's files)."""
  if kind == "directory":
    path.mkdir()
    (path / "keep.txt").write_text("the user's")
  elif kind == "empty directory":
    path.mkdir()
  elif kind == "symlink":
    target = outside / f"target-of-{path.name}"
    target.write_text("the user's, outside the workdir")
    path.symlink_to(target)
  elif kind == "dangling symlink":
    path.symlink_to(outside / f"nothing-{path.name}")
  else:
    path.write_text("the user's")


def assert_refused(status, lines, name):
  assert status == 2 and len(lines) == 1 and lines[0].startswith("vae_jax: error:"), lines
  assert name in lines[0] and "Traceback" not in lines[0], lines[0]


# The run writes tensorboard/ only with tensorboardX (the tensorboard extra) installed.
NEEDS_TENSORBOARDX = pytest.mark.skipif(
  importlib.util.find_spec("tensorboardX") is None,
  reason="tensorboard/ is an output only with tensorboardX installed (the tensorboard extra)",
)
TENSORBOARD = pytest.param("tensorboard", marks=NEEDS_TENSORBOARDX)

FRESH_NAMES = [
  "config.json",
  "metrics.jsonl",
  "checkpoints",
  TENSORBOARD,
  "sample_1.png",
  "reconstruction_2.png",
  ".first_checkpoint_pending",
  ".metrics.jsonl.tmp",
  ".sample_1.png.tmp",
]


@pytest.mark.parametrize(
  "kind", ["directory", "empty directory", "symlink", "dangling symlink", "file"]
)
@pytest.mark.parametrize("name", FRESH_NAMES)
def test_a_fresh_workdir_refuses_anything_under_an_output_name(
  name, kind, session_idx_dir, tmp_path, capsys
):
  workdir, outside = tmp_path / "run", tmp_path / "users"
  workdir.mkdir()
  outside.mkdir()
  (workdir / "notes.txt").write_text("the user's")
  put(kind, workdir / name, outside)
  before = snapshot(tmp_path)
  status, lines = run_main(
    capsys, train_args(workdir, session_idx_dir, "--config.run.save_images=True")
  )
  assert_refused(status, lines, name)
  assert snapshot(tmp_path) == before


def test_an_image_name_past_the_last_epoch_is_not_in_the_way_and_stays(
  session_idx_dir, tmp_path, capsys
):
  """The issue's case, inverted: sample_9.png/ (the user's) is no output of a 2-epoch run."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  put("directory", workdir / "sample_9.png", tmp_path)
  (workdir / "notes.txt").write_text("the user's")
  status, _ = run_main(
    capsys, train_args(workdir, session_idx_dir, "--config.run.save_images=True")
  )
  assert status == 0
  assert (workdir / "sample_9.png" / "keep.txt").read_text() == "the user's"
  assert (workdir / "notes.txt").read_text() == "the user's"
  assert (workdir / "sample_2.png").is_file()


@pytest.fixture()
def resumable(trained_run, tmp_path):
  """A copy of the finished 2-epoch run (no images), to be continued to epoch 3 with images."""
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  (tmp_path / "users").mkdir()
  return workdir


def continue_args(workdir, idx_dir):
  return [
    *train_args(workdir, idx_dir),
    "--config.optim.num_epochs=3",
    "--config.run.save_images=True",
  ]


RESUMED_NAMES = [
  "config.json",
  "metrics.jsonl",
  TENSORBOARD,
  "checkpoints",
  "sample_2.png",
  "sample_3.png",
  "reconstruction_3.png",
  ".first_checkpoint_pending",
  ".config.json.tmp",
]


@pytest.mark.parametrize("kind", ["directory", "symlink", "dangling symlink"])
@pytest.mark.parametrize("name", RESUMED_NAMES)
def test_a_resumed_workdir_refuses_a_directory_or_link_under_an_output_name(
  name, kind, resumable, session_idx_dir, capsys
):
  path, outside = resumable / name, resumable.parent / "users"
  if path.exists():
    if kind == "directory" and path.is_dir():
      pytest.skip(f"{name} is the run's own directory")
    shutil.move(path, outside / f"moved-{name}")  # The user replaced the run's entry.
  put(kind, path, outside)
  before = snapshot(resumable.parent)
  status, lines = run_main(capsys, continue_args(resumable, session_idx_dir))
  assert_refused(status, lines, name)
  assert snapshot(resumable.parent) == before


def test_a_resumed_run_keeps_the_users_files_and_replaces_only_its_own(
  resumable, session_idx_dir, capsys
):
  put(
    "directory", resumable / "sample_7.png", resumable.parent
  )  # Past the last epoch: not an output.
  (resumable / "notes.txt").write_text("the user's")
  put("symlink", resumable / "mine", resumable.parent / "users")
  before = {
    k: v for k, v in snapshot(resumable)[0].items() if k.startswith(("sample_7", "notes", "mine"))
  }
  status, _ = run_main(capsys, continue_args(resumable, session_idx_dir))
  assert status == 0
  after = listing(resumable)
  assert {k: v for k, v in after.items() if k.startswith(("sample_7", "notes", "mine"))} == before
  assert (resumable / "sample_7.png" / "keep.txt").read_text() == "the user's"
  assert [
    json.loads(l)["epoch"] for l in (resumable / "metrics.jsonl").read_text().splitlines()
  ] == [1, 2, 3]
  assert (resumable / "sample_2.png").is_file() and (resumable / "sample_3.png").is_file()


def test_leftovers_of_a_run_without_checkpoints_are_removed_only_if_all_are_its_own(
  trained_run, session_idx_dir, tmp_path, capsys
):
  """A run that ended before its first checkpoint starts afresh, its files removed; a user's
  file inside its checkpoints/ or tensorboard/ stops that, and nothing is removed."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  shutil.copy(trained_run / "config.json", workdir / "config.json")  # Marks a vae_jax run.
  (workdir / "metrics.jsonl").write_text("")
  (workdir / "checkpoints" / "1.orbax-checkpoint-tmp").mkdir(parents=True)
  (workdir / "tensorboard").mkdir()
  (workdir / "tensorboard" / "my-notes.txt").write_text("the user's")
  before = snapshot(tmp_path)
  status, lines = run_main(capsys, train_args(workdir, session_idx_dir))
  assert_refused(status, lines, "tensorboard/my-notes.txt")
  assert snapshot(tmp_path) == before
  (workdir / "tensorboard" / "my-notes.txt").unlink()  # Now all of it is the run's own.
  status, _ = run_main(capsys, train_args(workdir, session_idx_dir))
  assert status == 0 and not (workdir / "checkpoints" / "1.orbax-checkpoint-tmp").exists()
  assert [json.loads(l)["epoch"] for l in (workdir / "metrics.jsonl").read_text().splitlines()] == [
    1,
    2,
  ]


def test_a_config_json_that_is_not_a_runs_does_not_mark_one(session_idx_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"my": "settings"}')
  before = snapshot(tmp_path)
  status, lines = run_main(capsys, train_args(workdir, session_idx_dir))
  assert_refused(status, lines, "config.json is in the way")
  assert snapshot(tmp_path) == before


# ---- sweeps: the same rule for the sweep's directory and each run directory in it ----

STUDY = """
from vae_jax import sweep
def get_config():
  return sweep.make_study("s", "?", AXES, seeds=1, base={
      "optim.num_epochs": 1, "optim.batch_size": 32, "data.source": "idx", "data.dir": DATA,
      "run.save_images": False})
"""


def _study(tmp_path, axes) -> Path:
  data = write_idx_dir(
    tmp_path / "data", {"train": synthetic_split(64, 0), "test": synthetic_split(32, 1)}
  )
  path = tmp_path / "study.py"
  path.write_text(STUDY.replace("AXES", repr(axes)).replace("DATA", repr(str(data))))
  return path


def test_a_sweep_axis_with_an_invalid_value_is_refused_before_anything_is_created(tmp_path, capsys):
  study = _study(tmp_path, {"model.latent_dim": [2, 0]})
  before = snapshot(tmp_path)
  status, lines = run_main(
    capsys, ["sweep", f"--config={study}", f"--workdir={tmp_path / 'sweep'}"]
  )
  assert_refused(status, lines, "model.latent_dim=0")
  assert snapshot(tmp_path) == before and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
  "where,kind",
  [
    ("results.csv", "symlink"),
    ("summary.md", "file"),
    ("runs", "dangling symlink"),
    ("runs/model.latent_dim=2/seed1/metrics.jsonl", "directory"),
    ("runs/model.latent_dim=2/seed1/config.json", "symlink"),
  ],
)
def test_a_sweep_refuses_anything_in_the_way_of_its_outputs(where, kind, tmp_path, capsys):
  study, workdir = _study(tmp_path, {"model.latent_dim": [2]}), tmp_path / "sweep"
  (workdir / where).parent.mkdir(parents=True)
  if "/" in where:  # Inside runs/: the directory is a sweep's (its groups/ marks it).
    (workdir / "groups").mkdir()
  (tmp_path / "users").mkdir()
  put(kind, workdir / where, tmp_path / "users")
  before = snapshot(tmp_path)
  status, lines = run_main(capsys, ["sweep", f"--config={study}", f"--workdir={workdir}"])
  assert_refused(status, lines, Path(where).name)
  assert snapshot(tmp_path) == before
