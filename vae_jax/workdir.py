"""A run's directory: checked, locked and prepared before anything is written; its log and table."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from etils import epath

from vae_jax import checkpoint

# Record keys that are not per-example metrics: kept out of tables and plots' metric lists.
BOOKKEEPING = ("epoch", "train_examples", "steps", "train_seconds", "compile_seconds")


class WorkdirError(ValueError):
  """The work directory cannot be used; nothing in it was changed."""


def check_directory(directory: str | Path, what: str = "workdir") -> Path:
  """The directory, if it can be one: refused (nothing created) when it is a file."""
  directory = epath.Path(directory)
  try:
    str(directory).encode()
  except UnicodeEncodeError:
    raise WorkdirError(f"{what} {directory}: its name is not valid UTF-8, which the checkpoint "
                       "library cannot write; choose another name") from None
  try:
    if directory.exists() and not directory.is_dir():
      raise WorkdirError(f"{what} {directory}: exists and is not a directory")
  except OSError as e:
    raise WorkdirError(f"{what} {directory}: unusable ({e.strerror})") from None
  return directory


@contextlib.contextmanager
def locked(directory: str | Path, what: str = "workdir") -> Iterator[Path]:
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
    raise WorkdirError(f"{what} {directory}: in use by another vae_jax process (pid {holder}); "
                       "wait for it to end, or choose another directory") from None
  try:
    yield directory
  finally:
    os.close(fd)  # Releases the lock.


def _is_link(path) -> bool:
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


def prepare_workdir(workdir: str | Path, restart: bool = False) -> Path:
  """Checks the (locked) work directory is writable and holds no other run's leftovers.

  A directory with checkpoints is resumed; one whose run ended before its first checkpoint
  (an empty metrics.jsonl: killed, or stopped by an error) starts afresh, its files removed;
  one with a non-empty metrics.jsonl but no checkpoint (they were deleted) is refused.
  ``restart`` moves an earlier run into ``replaced_<time>/`` first: nothing is deleted.
  """
  workdir = epath.Path(workdir)
  for name, kind in (("metrics.jsonl", "file"), ("config.json", "file"), (checkpoint.SUBDIR, "directory"),
                     ("tensorboard", "directory")):
    path = workdir / name
    if path.exists() and (path.is_dir() != (kind == "directory") or _is_link(path)):
      raise WorkdirError(f"workdir {workdir}: {name} is not a {kind} (a run writes one there); "
                         "choose another --workdir")
  try:
    probe = workdir / f".write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror})") from None
  if restart:
    move_run_aside(workdir)
  elif not checkpoint.has_checkpoints(workdir):
    metrics = workdir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().length and not (workdir / PENDING).exists():
      raise WorkdirError(f"workdir {workdir}: holds a run (metrics.jsonl) with no checkpoint to "
                         "resume from; choose a new --workdir, or pass --config.run.restart=True to "
                         "move that run aside and start afresh")
    remove_unfinished_run(workdir)
  return workdir


# Present while metrics.jsonl logs epochs and no checkpoint has been completed yet (saves
# every N epochs, or in the background): such a log is provisional, and a run killed then
# starts afresh instead of being refused as a run whose checkpoints were deleted.
PENDING = ".first_checkpoint_pending"


def mark_pending(directory: Path, pending: bool) -> None:
  """Creates or removes the directory's PENDING mark."""
  mark = epath.Path(directory) / PENDING
  if pending and not mark.exists():
    mark.write_text("")
  elif not pending and mark.exists():
    mark.unlink()


def remove_unfinished_run(workdir: Path) -> None:
  """Deletes what a run that never reached its first checkpoint left: it holds no epoch."""
  for path in run_files(workdir):
    if path.is_dir() and not _is_link(path):
      path.rmtree()
    else:
      path.unlink()


def run_files(workdir: Path) -> list[Path]:
  """The files and directories a training run writes in its workdir."""
  pattern = re.compile(r"(reconstruction|sample)_\d+\.png")
  return [p for p in sorted(workdir.iterdir())
          if p.name in ("metrics.jsonl", "config.json", "tensorboard", checkpoint.SUBDIR, PENDING)
          or pattern.fullmatch(p.name)]


def move_run_aside(workdir: Path) -> Path | None:
  """Moves an earlier run's files into workdir/replaced_<UTC time>/; returns it (None: no run)."""
  names = run_files(workdir)
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
  checkpoint.write_text_atomic(epath.Path(workdir) / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in records))


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
  """The per-example metrics of the records (train_*, test_*), in their order."""
  return [k for k in records[0] if k not in BOOKKEEPING] if records else []


def format_table(records: list[dict[str, Any]]) -> str:
  """Per-epoch metrics (nats per example) and times as a markdown table, columns from the records."""
  keys = metric_keys(records)
  lines = ["| epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " | train s | compile s |",
           "| ---: |" + " ---: |" * (len(keys) + 2)]
  for r in records:
    lines.append(f"| {r['epoch']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) +
                 f" | {r['train_seconds']:.3f} | {r['compile_seconds']:.2f} |")
  return "\n".join(lines)
