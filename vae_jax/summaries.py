"""TensorBoard scalars and image grids, through tensorboardX (optional; no TensorFlow).

Without tensorboardX installed (pip install tensorboardX, or the experiments extra)
``open_writer`` returns None and every function here does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SCALARS = ("train_loss", "train_bce", "train_kl", "test_loss", "test_bce", "test_kl",
           "test_loss_mean_z", "train_seconds")


def open_writer(logdir: str | Path):
  """A tensorboardX SummaryWriter on logdir, or None when tensorboardX is missing."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  return SummaryWriter(str(logdir))


def write_records(writer, records: list[dict[str, Any]]) -> None:
  """One scalar per metric and epoch (step = epoch)."""
  if writer is None:
    return
  for record in records:
    for key in SCALARS:
      if key in record:
        writer.add_scalar(key, record[key], record["epoch"])
  writer.flush()


def write_grid(writer, tag: str, grid_HxW_u8: np.ndarray, epoch: int) -> None:
  """An image grid (uint8, as images.image_grid makes it) at step = epoch."""
  if writer is not None:
    writer.add_image(tag, np.asarray(grid_HxW_u8)[None], epoch)  # CHW, one channel.
