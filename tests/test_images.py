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


def test_colour_images_tile_into_a_colour_grid_and_one_channel_into_gray():
  rgb = np.zeros((3, 4, 5, 3), np.float32)
  rgb[1, ..., 0] = 1.0  # The second image is pure red.
  grid = images.image_grid(rgb, nrow=2)
  assert grid.shape == (2 * 6 + 2, 2 * 7 + 2, 3)
  np.testing.assert_array_equal(grid[2:6, 9:14], np.broadcast_to([255, 0, 0], (4, 5, 3)))
  gray = images.image_grid(rgb[..., :1], nrow=2)  # N x H x W x 1: the same grid, one channel.
  np.testing.assert_array_equal(gray, grid[..., 0])
