"""Image grids as the reference saves them (torchvision.utils.save_image defaults)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def image_grid(images_NxHxW: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
  """Tiles images in [0, 1] into a uint8 grid, ``nrow`` per row, with black padding.

  Same layout and rounding as torchvision's make_grid + save_image (padding 2, value 0).
  """
  images = np.asarray(images_NxHxW, np.float32)
  n, h, w = images.shape
  ncol = min(nrow, n)
  nrows = -(-n // ncol)
  grid = np.zeros((nrows * (h + padding) + padding, ncol * (w + padding) + padding), np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, ncol)
    top, left = r * (h + padding) + padding, c * (w + padding) + padding
    grid[top:top + h, left:left + w] = image
  return np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, grid_HxW: np.ndarray) -> None:
  Image.fromarray(grid_HxW, mode="L").save(path)
