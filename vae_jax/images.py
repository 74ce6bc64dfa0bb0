"""Image grids as the reference saves them (torchvision.utils.save_image defaults)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def image_grid(images_NxHxWxC: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
  """Tiles images in [0, 1] into a uint8 grid, ``nrow`` per row, with black padding.

  Same layout and rounding as torchvision's make_grid + save_image (padding 2, value 0).
  N x H x W x 1 (or N x H x W) gives an H' x W' gray grid, N x H x W x 3 an H' x W' x 3 one.
  """
  images = np.asarray(images_NxHxWxC, np.float32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  n, h, w = images.shape[:3]
  ncol = min(nrow, n)
  nrows = -(-n // ncol)
  grid = np.zeros((nrows * (h + padding) + padding, ncol * (w + padding) + padding,
                   *images.shape[3:]), np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, ncol)
    top, left = r * (h + padding) + padding, c * (w + padding) + padding
    grid[top:top + h, left:left + w] = image
  return np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, grid_u8: np.ndarray) -> None:
  """A gray (H x W) or colour (H x W x 3) uint8 grid as a PNG."""
  Image.fromarray(grid_u8, mode="L" if grid_u8.ndim == 2 else "RGB").save(path)
