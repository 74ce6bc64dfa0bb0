"""Image grids laid out as torchvision's save_image lays them out."""

import numpy as np

from vae_jax import images


def test_image_grid_layout_padding_and_rounding():
  tiles = np.stack([np.full((2, 3), v, np.float32) for v in (0.0, 0.5, 1.0)])
  grid = images.image_grid(tiles, nrow=2, padding=1)
  # 2 rows x 2 columns of 2x3 tiles, 1 pixel of black padding around and between.
  expected = np.zeros((2 * 3 + 1, 2 * 4 + 1), np.uint8)
  expected[1:3, 1:4] = 0
  expected[1:3, 5:8] = 128  # 0.5 * 255 + 0.5, truncated: 128 as torchvision rounds.
  expected[4:6, 1:4] = 255
  np.testing.assert_array_equal(grid, expected)


def test_save_png_round_trip(tmp_path):
  from PIL import Image
  grid = images.image_grid(np.random.RandomState(0).rand(16, 28, 28), nrow=8)
  images.save_png(tmp_path / "g.png", grid)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
