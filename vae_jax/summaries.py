"""TensorBoard scalars and image grids, through tensorboardX (optional; no TensorFlow).

Without tensorboardX installed (pip install tensorboardX, or the experiments extra)
``open_writer`` returns None and every function here does nothing.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np


def open_writer(logdir: str | Path):
  """A tensorboardX SummaryWriter on logdir, or None when tensorboardX is missing."""
  try:
    with _without_torch():
      from tensorboardX import SummaryWriter
  except ImportError:
    return None
  return SummaryWriter(str(logdir))


@contextlib.contextmanager
def _without_torch():
  """tensorboardX imports torch when it is installed (about 2 s of a run's start-up) only to
  accept torch tensors; we pass numpy arrays, so torch is hidden while tensorboardX loads
  (unless something already imported it)."""
  if "torch" in sys.modules:
    yield
    return
  sys.modules["torch"] = None  # `import torch` raises ImportError.
  try:
    yield
  finally:
    del sys.modules["torch"]


def write_records(writer, records: list[dict[str, Any]]) -> None:
  """One scalar per number in each record (its metrics and times), step = epoch."""
  if writer is None:
    return
  for record in records:
    for key, value in record.items():
      if key != "epoch" and isinstance(value, (int, float)):
        writer.add_scalar(key, value, record["epoch"])
  writer.flush()


def write_grid(writer, tag: str, grid_u8: np.ndarray, epoch: int) -> None:
  """An image grid (uint8 HxW or HxWxC, as images.image_grid makes it) at step = epoch."""
  if writer is not None:
    grid = np.asarray(grid_u8)
    writer.add_image(tag, grid[None] if grid.ndim == 2 else grid.transpose(2, 0, 1), epoch)  # CHW
