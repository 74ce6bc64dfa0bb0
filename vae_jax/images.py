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
  grid = np.zeros(
    (nrows * (h + padding) + padding, ncol * (w + padding) + padding, *images.shape[3:]), np.float32
  )
  for i, image in enumerate(images):
    r, c = divmod(i, ncol)
    top, left = r * (h + padding) + padding, c * (w + padding) + padding
    grid[top : top + h, left : left + w] = image
  return np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, grid_u8: np.ndarray) -> None:
  """A gray (H x W) or colour (H x W x 3) uint8 grid as a PNG.

  Written to ``.<name>.tmp`` (never through a link there) and renamed, as files.write_atomic
  does, with PIL writing into the file itself: a failed write (a full disk) leaves no partial
  PNG, and the file replaced is the old one or the new, whole.
  """
  path = os.fspath(path)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
  try:
    with os.fdopen(
      os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666), "wb"
    ) as f:
      Image.fromarray(grid_u8, mode="L" if grid_u8.ndim == 2 else "RGB").save(f, format="PNG")
    os.replace(tmp, path)
  except OSError as e:  # Named by the image (a write's error names no file; the rename's, two).
    raise OSError(e.errno, e.strerror, path) from None
  finally:
    if os.path.isfile(tmp) and not os.path.islink(tmp):
      os.unlink(tmp)  # Left only by a failed write.


def read_png(path: str | os.PathLike, image_shape: tuple[int, ...]) -> np.ndarray:
  """A PNG as uint8 H x W x C of image_shape: gray (mode L, or 1-bit as 0 and 255) for C = 1,
  RGB for C = 3; ValueError naming the file for any other size or mode (a palette or an alpha
  channel would not come back bit for bit)."""
  height, width, channels = image_shape
  modes = {1: ("L", "1"), 3: ("RGB",)}.get(channels, ())
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode not in modes or image.size != (width, height):
        raise ValueError(
          f"PNG {path}: {image.size[0]}x{image.size[1]} {image.mode}; expected {width}x{height} "
          f"{' or '.join(modes) or f'{channels}-channel'} images (the model's)"
        )
      pixels = np.asarray(image.convert(modes[0]), np.uint8)
  except OSError as e:
    raise ValueError(f"PNG {path}: cannot be read ({e})") from None
  return pixels.reshape(height, width, channels)
