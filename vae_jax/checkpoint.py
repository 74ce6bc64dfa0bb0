"""Orbax checkpoints of a run: everything an exact resume needs, written atomically.

A checkpoint is ``workdir/checkpoints/<epoch>/`` with two items:
- ``state``: params, Adam state, step and the run's PRNG key data (uint32) of K >= 1
  models, stacked on axis 0;
- ``meta``: JSON with the epoch, the config (dotted keys), the per-model overrides, every
  model's per-epoch records so far, a fingerprint of the data and the SHA-256 of the state's arrays (checked on every restore, so a
  corrupted file is an error, never silently different numbers).
Orbax writes each checkpoint to a temporary directory and renames it when complete: a
process killed during a save leaves the previous checkpoints as they were, and the
half-written one is never listed. Kept: the last ``keep`` epochs and the best by test loss.

The state is copied to the host once per save (``host_copy``): that copy is hashed and
written, by process 0 alone (``Writer``; other processes need no disk), in a background
thread when asked, so the device goes on training while the files are written.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import re
from typing import TYPE_CHECKING, Any, TypeAlias

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vae_jax import files

if TYPE_CHECKING:
  from vae_jax.data import Splits

Path: TypeAlias = epath.Path  # Local directories, or any path etils.epath knows (gs://...).

SUBDIR = "checkpoints"
MANIFEST = "files.sha256"  # In each checkpoint: SHA-256 of its files, written after the save.


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or does not fit the run; nothing was changed."""


def manager(workdir: str | Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoint manager: keeps the last ``keep`` epochs plus the best test loss."""
  policies = ocp.checkpoint_managers
  policy = policies.AnyPreservationPolicy(
    [
      policies.LatestN(n=keep),
      policies.BestN(get_metric_fn=lambda m: -m["test_loss"], n=1),
    ]
  )
  # best_fn only makes orbax write each checkpoint's metrics, which the policy needs after a
  # restart; retention is the policy's.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=lambda m: m["test_loss"],
    best_mode="min",
    enable_async_checkpointing=False,
    create=False,
    read_only=read_only,
    cleanup_tmp_directories=not read_only,
    # Process 0 alone reads and writes checkpoints: no other process waits in orbax, and
    # none needs the directory (multi-host runs without a shared disk).
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=0, active_processes={0} if jax.process_count() > 1 else None
    ),
  )
  directory = absolute(workdir) / SUBDIR
  try:
    if not read_only:
      directory.mkdir(parents=True, exist_ok=True)
    return ocp.CheckpointManager(directory, options=options)
  except Exception as e:  # Orbax reads every checkpoint's metadata here.
    raise CheckpointError(f"checkpoints {directory}: cannot be read ({_one_line(e)})") from None


def is_local(path) -> bool:
  """Whether path is on this machine's file system (not gs://, s3://...)."""
  return "://" not in str(path)


def absolute(path) -> Path:
  path = Path(path)
  return path.absolute() if is_local(path) else path


def has_checkpoints(workdir: str | Path) -> bool:
  """Whether workdir holds at least one complete checkpoint (temporary ones do not count)."""
  directory = Path(workdir) / SUBDIR
  if not directory.is_dir():
    return False
  with manager(workdir, read_only=True) as mngr:
    return bool(mngr.all_steps())


def tree_sha256(tree) -> str:
  """SHA-256 over the tree's leaves in order: dtype, shape and bytes of each."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def host_copy(tree):
  """The tree as numpy arrays on this host, for every process (a collective where arrays
  span processes: every process must call it)."""
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, jax.device_get(tree) if jax.process_count() == 1 else tree)


class Writer:
  """The run's checkpoint writer: process 0 saves host copies, in a background thread when
  ``asynchronous`` (one save in flight; the next save, ``wait`` and ``close`` wait for it and
  raise its error). Other processes hold no manager and write nothing."""

  def __init__(self, ckpt_dir: str | Path, keep: int, asynchronous: bool):
    self.primary = jax.process_index() == 0
    self.directory = absolute(ckpt_dir) / SUBDIR
    self.mngr = manager(ckpt_dir, keep=keep) if self.primary else None
    self.pool = concurrent.futures.ThreadPoolExecutor(1) if asynchronous and self.primary else None
    self.pending: concurrent.futures.Future[Path] | None = None
    self.finished = 0  # Saves completed by this writer.

  def save(self, epoch: int, state_tree, meta: dict[str, Any], test_loss: float) -> Path:
    """Starts (or, synchronous, makes) epoch's checkpoint; returns where it will be."""
    tree = host_copy(state_tree)  # Every process: a collective where arrays span processes.
    self.wait()
    if not self.primary:
      return self.directory / str(epoch)  # Process 0's.
    if self.pool is None:
      where = save(self.mngr, epoch, tree, meta, test_loss)
      self.finished += 1
      return where
    self.pending = self.pool.submit(save, self.mngr, epoch, tree, meta, test_loss)
    return checkpoint_dir(self.mngr, epoch)

  def wait(self) -> None:
    if self.pending is not None:
      pending, self.pending = self.pending, None
      pending.result()
      self.finished += 1

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self.pool is not None:
        self.pool.shutdown()
      if self.mngr is not None:
        self.mngr.close()


def data_fingerprint(splits: Splits) -> dict[str, Any]:
  """Per split: example count, image shape and SHA-256 of images and labels."""
  out = {}
  for split, (images, labels) in sorted(splits.items()):
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    out[split] = {
      "examples": int(len(images)),
      "image_shape": list(images.shape[1:]),
      "sha256": digest.hexdigest(),
    }
  return out


def save(
  mngr: ocp.CheckpointManager, epoch: int, state_tree, meta: dict[str, Any], test_loss: float
) -> Path:
  """Saves epoch's state tree and meta (with the state's SHA-256) and returns its directory.

  test_loss: what 'best' ranks checkpoints by (the mean over the models).
  """
  meta = {**meta, "epoch": epoch, "state_sha256": tree_sha256(state_tree)}
  where = checkpoint_dir(mngr, epoch)
  try:
    mngr.save(
      epoch,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta)
      ),
      metrics={"test_loss": test_loss},
      force=True,
    )
    mngr.wait_until_finished()
    write_text_atomic(
      where / MANIFEST,
      "".join(f"{digest}  {name}\n" for name, digest in _file_digests(where).items()),
    )
  except Exception as e:  # Orbax and tensorstore raise many types, from their own threads.
    raise CheckpointError(
      f"checkpoint {where}: cannot be written ({os_reason(e)}); the "
      "checkpoints saved before it are kept: free space (or fix the "
      "permissions), then run the same command to resume from them"
    ) from None
  return where


def os_reason(e: BaseException) -> str:
  """What the OS said, when an OS error is behind e (an OSError in its chain, or tensorstore's
  os_error_code): 'No space left on device (ENOSPC)'; otherwise e in one line."""
  seen: BaseException | None = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return f"{os.strerror(seen.errno)} ({errno.errorcode.get(seen.errno, seen.errno)})"
    code = re.search(r"os_error_code='?(\d+)", str(seen))
    if code:
      number = int(code.group(1))
      return f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
    seen = seen.__cause__ or seen.__context__
  return _one_line(e)


def _file_digests(directory: Path) -> dict[str, str]:
  return {
    name: hashlib.sha256(path.read_bytes()).hexdigest()
    for name, path in sorted(_files(directory))
    if name != MANIFEST
  }


def _files(directory: Path, prefix: str = ""):
  """(relative name, path) of every file under directory (iterdir: what an object store lists)."""
  for path in directory.iterdir():
    if path.is_dir():
      yield from _files(path, f"{prefix}{path.name}/")
    else:
      yield f"{prefix}{path.name}", path


def verify_files(where: Path) -> None:
  """Checks a checkpoint's files against the SHA-256 manifest written after its save.

  Catches truncated or altered files before orbax reads them. A checkpoint without a
  manifest (a kill between the save and the manifest) is left to the state's SHA-256.
  """
  manifest = where / MANIFEST
  if not manifest.exists():
    return
  try:
    recorded = dict(reversed(line.split("  ", 1)) for line in manifest.read_text().splitlines())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"checkpoint {where}: manifest {MANIFEST} cannot be read ({e})") from None
  found = _file_digests(where)
  for name, digest in sorted(recorded.items()):
    if name not in found:
      raise CheckpointError(f"checkpoint {where}: file {name} is missing (listed in {MANIFEST})")
    if found[name] != digest:
      raise CheckpointError(
        f"checkpoint {where}: file {name} differs from the SHA-256 recorded "
        "when it was saved (truncated or corrupted)"
      )


def checkpoint_dir(mngr: ocp.CheckpointManager, epoch: int) -> Path:
  return Path(mngr.directory) / str(epoch)


def read_meta(mngr: ocp.CheckpointManager, epoch: int) -> dict[str, Any]:
  """The meta item of one checkpoint; CheckpointError if it cannot be read."""
  verify_files(checkpoint_dir(mngr, epoch))
  try:
    meta = mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise CheckpointError(
      f"checkpoint {checkpoint_dir(mngr, epoch)}: meta cannot be read ({_one_line(e)})"
    ) from None
  if (
    not isinstance(meta, dict)
    or "config" not in meta
    or "records" not in meta
    and "model_records" not in meta
  ):
    raise CheckpointError(
      f"checkpoint {checkpoint_dir(mngr, epoch)}: meta is not a vae_jax "
      "checkpoint (expected keys config, model_records)"
    )
  if "model_records" not in meta:
    raise CheckpointError(
      f"checkpoint {checkpoint_dir(mngr, epoch)}: written by vae_jax before "
      "0.2 (flat config, one model), which this version does not read; "
      "retrain, or load it with vae_jax 0.1"
    )
  return meta


def select(mngr: ocp.CheckpointManager, which: str = "latest") -> int:
  """The epoch to load: 'latest', 'best' (lowest test loss) or an epoch number."""
  steps = sorted(mngr.all_steps())
  if not steps:
    raise CheckpointError(
      f"no checkpoint in {mngr.directory}: expected a directory written by "
      "`python -m vae_jax train`"
    )
  if which == "latest":
    return steps[-1]
  if which == "best":
    return mngr.best_step()
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise CheckpointError(
    f"checkpoint {which!r}: expected 'latest', 'best' or one of the saved "
    f"epochs {', '.join(map(str, steps))}"
  )


def restore(mngr: ocp.CheckpointManager, epoch: int, target_tree, meta: dict[str, Any]):
  """The state tree of one checkpoint, laid out as target_tree, its SHA-256 verified.

  ``meta``: what read_meta returned for it (which verified the files first).
  """
  where = checkpoint_dir(mngr, epoch)
  try:
    restored = mngr.restore(
      epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_tree))
    ).state
  except Exception as e:
    raise CheckpointError(
      f"checkpoint {where}: state cannot be restored ({_one_line(e)})"
    ) from None
  if tree_sha256(restored) != meta.get("state_sha256"):
    raise CheckpointError(
      f"checkpoint {where}: state does not match the SHA-256 recorded when it "
      "was saved (corrupted files?)"
    )
  return restored


def write_text_atomic(path: Path, text: str) -> None:
  """Writes through a temporary file and a rename: readers see the old or the new text.
  (An object store replaces a whole object at once: written directly there.)"""
  path = Path(path)
  if not is_local(path):
    path.write_text(text)
    return
  files.write_atomic(path, text.encode("utf-8"))


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) < 200 else text[:200] + "..."
