"""The IDX reader and the data sources."""

import gzip
import shutil

import numpy as np
import pytest
from conftest import write_idx

from vae_jax import data


def test_idx_round_trip_plain_and_gzip(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for compress in (False, True):
    path = write_idx(tmp_path / f"x{compress}", images, compress=compress)
    out = data.read_idx(path, data.IMAGES_MAGIC)
    np.testing.assert_array_equal(out, images)
    assert out.dtype == np.uint8


def test_idx_reader_rejects_wrong_magic(tmp_path):
  path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
  with pytest.raises(
    data.DataError, match=r"train-images-idx3-ubyte: expected magic 2049 .*found 2051"
  ):
    data.read_idx(path, data.LABELS_MAGIC)


def test_idx_reader_rejects_truncated_file(tmp_path):
  path = write_idx(tmp_path / "images", np.zeros((3, 28, 28)))
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(
    data.DataError,
    match=r"images: truncated, shape \(3, 28, 28\) needs 2352 data bytes, found 2342",
  ):
    data.read_idx(path)


def test_idx_reader_rejects_truncated_header(tmp_path):
  path = tmp_path / "images"
  path.write_bytes((2051).to_bytes(4, "big") + b"\x00\x00")
  with pytest.raises(data.DataError, match="truncated header"):
    data.read_idx(path)


def test_idx_reader_rejects_trailing_bytes(tmp_path):
  path = write_idx(tmp_path / "labels", np.zeros(5))
  path.write_bytes(path.read_bytes() + b"\x00")
  with pytest.raises(data.DataError, match="1 trailing bytes"):
    data.read_idx(path)


def test_idx_reader_rejects_unknown_dtype_code(tmp_path):
  path = write_idx(tmp_path / "images", np.zeros((1, 2, 2)), magic=0x0703)
  with pytest.raises(data.DataError, match="unknown dtype code 0x07"):
    data.read_idx(path)


def test_idx_reader_rejects_wrong_dtype_for_images(tmp_path):
  # float32 images (code 0x0D): a valid IDX file, but not MNIST's uint8.
  path = tmp_path / "images"
  path.write_bytes(
    (0x0D03).to_bytes(4, "big")
    + b"".join(d.to_bytes(4, "big") for d in (1, 2, 2))
    + np.zeros(4, ">f4").tobytes()
  )
  assert data.read_idx(path).dtype == np.float32
  with pytest.raises(
    data.DataError, match=r"expected magic 2051 \(uint8 with 3 dims\), found 3331"
  ):
    data.read_idx(path, data.IMAGES_MAGIC)


def test_idx_reader_rejects_corrupt_gzip(tmp_path):
  path = tmp_path / "images.gz"
  path.write_bytes(gzip.compress(b"\x00" * 100)[:20])
  with pytest.raises(data.DataError, match="images.gz: corrupt gzip stream"):
    data.read_idx(path)


def test_idx_pair_rejects_count_mismatch(tmp_path):
  images = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
  labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
  with pytest.raises(data.DataError, match="3 images but 4 labels"):
    data.read_idx_pair(images, labels)


def test_idx_directory_flat_gzipped(idx_dir, small_splits):
  for split in ("train", "test"):
    images, labels = data.load_split("idx", split, str(idx_dir))
    np.testing.assert_array_equal(images, small_splits[split][0])
    np.testing.assert_array_equal(labels, small_splits[split][1])
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_idx_directory_torchvision_layout_uncompressed(tmp_path, small_splits):
  raw = tmp_path / "MNIST" / "raw"
  raw.mkdir(parents=True)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    write_idx(raw / f"{prefix}-images-idx3-ubyte", small_splits[split][0])
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", small_splits[split][1])
  images, _ = data.load_split("idx", "test", str(tmp_path))
  np.testing.assert_array_equal(images, small_splits["test"][0])


def test_idx_directory_missing_file_is_named(idx_dir):
  (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte"):
    data.load_split("idx", "test", str(idx_dir))


def test_unknown_source_and_split_are_refused():
  with pytest.raises(data.DataError, match="data source 'web'"):
    data.load_split("web", "train")
  with pytest.raises(data.DataError, match="split 'valid'"):
    data.load_split("bundled", "valid")


def test_bundled_mnist_matches_its_published_checks():
  images, labels = data.load_split("bundled", "train")
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  np.testing.assert_array_equal(
    np.bincount(labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  )
  assert abs(images.mean() - 33.318) < 1e-3
  test_images, test_labels = data.load_split("bundled", "test")
  assert test_images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(
    np.bincount(test_labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  )


def test_bundled_checksum_mismatch_is_refused(tmp_path, monkeypatch, small_splits):
  for f in data.BUNDLED_DIR.iterdir():
    shutil.copy(f, tmp_path / f.name)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10000), compress=True)
  monkeypatch.setattr(data, "BUNDLED_DIR", tmp_path)
  data._load_bundled.cache_clear()
  try:
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256 of its content"):
      data.load_split("bundled", "test")
  finally:
    data._load_bundled.cache_clear()


def test_tfds_reads_mocked_dataset_without_network():
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data replaces download_and_prepare (nothing is fetched) and the ArrayRecord source.
  with tfds.testing.mock_data(num_examples=7):
    images, labels = data.load_split("tfds", "test", tfds_name="mnist", tfds_download=True)
  assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (7,) and labels.dtype == np.int64
  with tfds.testing.mock_data(num_examples=7):  # A limit reads only the first examples.
    first, first_labels = data.load_split(
      "tfds", "test", tfds_name="mnist", tfds_download=True, limit=3
    )
  np.testing.assert_array_equal(first, images[:3])
  np.testing.assert_array_equal(first_labels, labels[:3])


def test_tfds_unprepared_dataset_names_the_working_sources(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(
    data.DataError, match="not prepared .* downloads are off; use config.data.source='bundled'"
  ):
    data.load_split("tfds", "train", data_dir=str(tmp_path))


# Property-based: whatever the bytes, the reader returns the array they describe or raises
# DataError naming the file, never another exception.
from hypothesis import example, given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, derandomize=True)  # The same cases in every run.
@given(st.binary(max_size=64))
def test_idx_reader_on_arbitrary_bytes_returns_or_raises_one_data_error(content):
  try:
    array = data.parse_idx(content, "f.idx")
  except data.DataError as e:
    assert str(e).startswith("IDX file f.idx: ")
  else:
    assert array.size * array.dtype.itemsize == len(content) - 4 - 4 * array.ndim


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
  st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4),
  st.integers(0, 40),
  st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
)
@example([0, 1202215, 1203030, 6377216], 0, 0x08)  # Zero examples of a size numpy cannot hold.
def test_idx_reader_on_random_headers_and_truncations(dims, body, code):
  content = (
    bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + b"\1" * body
  )
  try:
    array = data.parse_idx(content, "f.idx")
  except data.DataError:
    return
  assert array.shape == tuple(dims) and array.nbytes == body


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(0, 200))
def test_a_valid_idx_file_cut_anywhere_is_refused(n, h, w, cut):
  array = np.arange(n * h * w, dtype=np.uint8).reshape(n, h, w)
  content = (
    bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
  )
  np.testing.assert_array_equal(data.parse_idx(content, "f.idx"), array)
  if cut < len(content):
    with pytest.raises(data.DataError, match="IDX file f.idx: .*truncated|shorter"):
      data.parse_idx(content[:cut], "f.idx")
