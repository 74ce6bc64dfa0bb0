"""A run's directory: checked, locked and prepared before anything is written; its log and table."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils import epath

from vae_jax import checkpoint

# Record keys that are not per-example metrics: kept out of tables and plots' metric lists.
BOOKKEEPING = ("epoch", "train_examples", "steps", "train_seconds", "compile_seconds")


class WorkdirError(ValueError):
  """The work directory cannot be used; nothing in it was changed."""


def check_directory(directory: epath.PathLike, what: str = "workdir") -> epath.Path:
  """The directory, if it can be one: refused (nothing created) when it is a file."""
  directory = epath.Path(directory)
  try:
    str(directory).encode()
  except UnicodeEncodeError:
    raise WorkdirError(
      f"{what} {directory}: its name is not valid UTF-8, which the checkpoint "
      "library cannot write; choose another name"
    ) from None
  try:
    if directory.exists() and not directory.is_dir():
      raise WorkdirError(f"{what} {directory}: exists and is not a directory")
  except OSError as e:
    raise WorkdirError(f"{what} {directory}: unusable ({e.strerror})") from None
  return directory


@contextlib.contextmanager
def locked(directory: epath.PathLike, what: str = "workdir") -> Iterator[epath.Path]:
  """Creates the directory and holds an exclusive lock on it while the body runs.

  The lock is fcntl.flock on the directory itself: nothing is written to take it, and the OS
  releases it when the process ends, however it ends. A second process is refused, naming
  the holder's pid (from /proc/locks, where the system lists it).
  """
  directory = check_directory(directory, what)
  if not checkpoint.is_local(directory):  # An object store has no lock: not held there.
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    return
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
  except OSError as e:
    raise WorkdirError(f"{what} {directory}: cannot be created or opened ({e.strerror})") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = lock_holder(os.fstat(fd).st_ino)
    os.close(fd)
    raise WorkdirError(
      f"{what} {directory}: in use by another vae_jax process (pid {holder}); "
      "wait for it to end, or choose another directory"
    ) from None
  try:
    yield directory
  finally:
    os.close(fd)  # Releases the lock.


def is_link(path) -> bool:
  return checkpoint.is_local(path) and os.path.islink(path)


def lock_holder(inode: int) -> str:
  """The pid holding a flock on the file with this inode, as /proc/locks lists it."""
  try:
    for line in Path("/proc/locks").read_text().splitlines():
      fields = line.split()
      if "FLOCK" in fields and any(f.endswith(f":{inode}") for f in fields):
        return fields[fields.index("FLOCK") + 3]
  except OSError:
    pass
  return "unknown"


# Present while metrics.jsonl logs epochs and no checkpoint has been completed yet (saves
# every N epochs, or in the background): such a log is provisional, and a run killed then
# starts afresh instead of being refused as a run whose checkpoints were deleted.
PENDING = ".first_checkpoint_pending"

# What a training run writes in its directory, by name (and the temporary names of its atomic
# writes). vae_jax replaces or removes an entry of these names only when it can show it wrote
# it: a regular file, or its own directory holding only what it writes there, in a directory
# whose config.json marks it as a vae_jax run. Anything else in the way is refused.
RUN_FILES = ("config.json", "metrics.jsonl", PENDING)
RUN_DIRECTORIES = (checkpoint.SUBDIR, "tensorboard")
IMAGE = re.compile(r"(?:reconstruction|sample)_(\d+)\.png")
CONFIG_SECTIONS = {"seed", "data", "optim", "run", "model", "objective"}
# What vae_jax writes inside its own directories (orbax's epochs, finished or temporary;
# tensorboardX's event files): a directory holding anything else is not removed.
OWN_CONTENTS = {
  checkpoint.SUBDIR: re.compile(r"\d+(\.orbax-checkpoint-tmp\S*)?"),
  "tensorboard": re.compile(r"events\.out\.tfevents\..+"),
}


def is_run(directory: str | Path) -> bool:
  """Whether directory's config.json marks it as a vae_jax run: a regular file holding a config."""
  path = epath.Path(directory) / "config.json"
  try:
    if is_link(path) or not path.is_file():
      return False
    config = json.loads(path.read_text())
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and CONFIG_SECTIONS <= config.keys()


def run_output(
  name: str, num_epochs: int | None = None, images: bool = True, tensorboard: bool = True
) -> str | None:
  """'file' or 'directory' when a run of num_epochs (None: any) writes that name, else None.
  A file's temporary name (.<name>.tmp, renamed to name when written) is a file of the run's."""
  temporary = re.fullmatch(r"\.(.+)\.tmp", name)
  if temporary and run_output(temporary.group(1), num_epochs, images, tensorboard) == "file":
    return "file"
  if name in RUN_FILES:
    return "file"
  if name in RUN_DIRECTORIES and (tensorboard or name != "tensorboard"):
    return "directory"
  image = IMAGE.fullmatch(name)
  if images and image and (num_epochs is None or 1 <= int(image.group(1)) <= num_epochs):
    return "file"
  return None


def check_outputs(
  directory: epath.PathLike,
  output,
  marked: bool,
  what: str = "workdir",
  unmarked: str = "this directory is not a vae_jax run (no config.json of one)",
) -> None:
  """Refuses (WorkdirError, nothing changed) anything in the way of an output of directory.

  output(name) -> 'file' | 'directory' | None: what will be written under that name. In the
  way: a symbolic link (never written through or removed), an entry of the other kind, or any
  entry at all when the directory is not ``marked`` as vae_jax's own.
  """
  directory = epath.Path(directory)
  if not directory.is_dir():
    return
  for path in sorted(directory.iterdir()):
    kind = output(path.name)
    if kind is None:
      continue
    if is_link(path):
      raise WorkdirError(
        f"{what} {directory}: {path.name} is a symbolic link where a run writes a "
        f"{kind}; vae_jax never writes through or removes a link: move it away, "
        f"or choose another --workdir"
      )
    if not (path.is_dir() if kind == "directory" else path.is_file()):
      raise WorkdirError(
        f"{what} {directory}: {path.name} is not a {kind} (a run writes one "
        "there); move it away, or choose another --workdir"
      )
    if not marked:
      raise WorkdirError(
        f"{what} {directory}: {path.name} is in the way of an output, and "
        f"{unmarked}, so vae_jax does not replace it; move it away, or choose "
        "another --workdir"
      )


def prepare_workdir(
  workdir: epath.PathLike,
  restart: bool = False,
  num_epochs: int | None = None,
  images: bool = True,
  tensorboard: bool = True,
) -> epath.Path:
  """Checks the (locked) work directory is writable and nothing of another's is in the way.

  A directory with checkpoints is resumed; one whose run ended before its first checkpoint
  (an empty metrics.jsonl: killed, or stopped by an error) starts afresh, its files removed;
  one with a non-empty metrics.jsonl but no checkpoint (they were deleted) is refused.
  ``restart`` moves an earlier run into ``replaced_<time>/`` first: nothing is deleted.
  What a run of num_epochs writes (images, tensorboard: if it writes them) must not be in the
  way (check_outputs); only what vae_jax wrote itself is ever removed (owned_run_files).
  """
  workdir = epath.Path(workdir)
  output = lambda name: run_output(name, num_epochs, images, tensorboard)
  check_outputs(workdir, output, marked=True)  # Links and entries of the wrong kind, first.
  if not restart and not checkpoint.has_checkpoints(workdir):
    metrics = workdir / "metrics.jsonl"
    if (
      metrics.is_file()
      and not is_link(metrics)
      and metrics.stat().length
      and not (workdir / PENDING).exists()
    ):
      raise WorkdirError(
        f"workdir {workdir}: holds a run (metrics.jsonl) with no checkpoint to "
        "resume from; choose a new --workdir, or pass --config.run.restart=True to "
        "move that run aside and start afresh"
      )
  check_outputs(workdir, output, is_run(workdir))
  removed = [] if restart or checkpoint.has_checkpoints(workdir) else owned_run_files(workdir, True)
  try:
    if checkpoint.is_local(workdir):  # A name of its own: nothing of anyone's is in the way.
      fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=workdir)
      os.close(fd)
      os.unlink(probe)
    else:
      probe = workdir / f".write_test_{os.getpid()}"
      probe.write_text("")
      probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror})") from None
  if restart:
    move_run_aside(workdir)
  for path in removed:  # What a run that never reached its first checkpoint left: no epoch.
    if path.is_dir():
      path.rmtree()
    else:
      path.unlink()
  return workdir


def mark_pending(directory: Path, pending: bool) -> None:
  """Creates or removes the directory's PENDING mark."""
  mark = epath.Path(directory) / PENDING
  if pending and not mark.exists():
    mark.write_text("")
  elif not pending and mark.exists():
    mark.unlink()


def owned_run_files(workdir: Path, removing: bool = False) -> list[epath.Path]:
  """The entries of workdir that a run wrote and vae_jax may move or remove: in a marked run,
  its regular files and its own directories (refused, when ``removing``, if they hold
  anything else: the first such entry is named)."""
  workdir = epath.Path(workdir)
  if not is_run(workdir):
    return []
  owned = []
  for path in sorted(workdir.iterdir()):
    kind = run_output(path.name)
    if (
      kind is None
      or is_link(path)
      or not (path.is_dir() if kind == "directory" else path.is_file())
    ):
      continue
    if kind == "directory" and removing:
      for inside in sorted(path.iterdir()):
        if not OWN_CONTENTS[path.name].fullmatch(inside.name) or is_link(inside):
          raise WorkdirError(
            f"workdir {workdir}: {path.name}/{inside.name} was not written by "
            f"vae_jax, so {path.name}/ (left by a run that ended before its first "
            "checkpoint) is not removed; move it away, or choose another --workdir"
          )
    owned.append(path)
  return owned


def move_run_aside(workdir: Path) -> Path | None:
  """Moves an earlier run's files into workdir/replaced_<UTC time>/; returns it (None: no run)."""
  names = owned_run_files(workdir)
  if not names:
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  dest = workdir / f"replaced_{stamp}"
  suffix = 1
  while dest.exists():
    dest, suffix = workdir / f"replaced_{stamp}_{suffix}", suffix + 1
  dest.mkdir()
  for path in names:
    path.rename(dest / path.name)
  print(f"restart: moved the earlier run to {dest}")
  return dest


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> None:
  """metrics.jsonl, one JSON record per epoch, rewritten whole and atomically."""
  checkpoint.write_text_atomic(
    epath.Path(workdir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)
  )


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
  """The per-example metrics of the records (train_*, test_*), in their order."""
  return [k for k in records[0] if k not in BOOKKEEPING] if records else []


def format_table(records: list[dict[str, Any]]) -> str:
  """Per-epoch metrics (nats per example) and times as a markdown table, columns from the records."""
  keys = metric_keys(records)
  lines = [
    "| epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " | train s | compile s |",
    "| ---: |" + " ---: |" * (len(keys) + 2),
  ]
  for r in records:
    lines.append(
      f"| {r['epoch']} | "
      + " | ".join(f"{r[k]:.4f}" for k in keys)
      + f" | {r['train_seconds']:.3f} | {r['compile_seconds']:.2f} |"
    )
  return "\n".join(lines)
