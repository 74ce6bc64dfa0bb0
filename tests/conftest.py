"""Shared fixtures: small synthetic MNIST-shaped data, so no test needs the full set."""

import gzip
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = False) -> Path:
  """Writes ``array`` (uint8) as an IDX file: the format written out independently of the reader."""
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = 0x0800 | array.ndim
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  content = header + array.tobytes()
  path.write_bytes(gzip.compress(content) if compress else content)
  return path


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rs = np.random.RandomState(seed)
  images = rs.randint(0, 256, (n, 28, 28)).astype(np.uint8)
  images[:, :4] = 0  # Some structure: a black band, as MNIST's borders.
  return images, rs.randint(0, 10, n).astype(np.int64)


@pytest.fixture(scope="session")
def small_splits():
  """300 training examples (two full batches of 128 and a partial one of 44), 100 test."""
  return {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}


@pytest.fixture()
def small_config():
  from vae_jax.configs import default
  config = default.get_config()
  config.num_epochs = 2
  config.progress = False
  return config


@pytest.fixture()
def idx_dir(tmp_path, small_splits):
  """A flat directory of the four IDX files (gzipped) holding the small splits."""
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = small_splits[split]
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, compress=True)
  return tmp_path
