"""MNIST-style data: a strict IDX reader and the sources that use it.

Every source returns ``(images_NxHxWxC uint8, labels_N int64)``: IDX files of 3 dimensions
(N x H x W, as MNIST's) get C = 1; 4-dimensional ones (N x H x W x C) keep theirs. Sources:

- ``bundled``: a copy that ships with the package or the system: MNIST's four IDX files in
  ``vae_jax/data_files/mnist`` (SHA-256 checked); Fashion-MNIST's where Debian's
  ``dataset-fashion-mnist`` puts them (``DEFAULT_IDX_DIRS``).
- ``idx``: a directory of IDX files, flat or in torchvision's ``MNIST/raw`` layout,
  gzipped or not (no directory: the dataset's default one, as for ``bundled``).
- ``tfds``: tensorflow-datasets through ``tfds.data_source`` (no TensorFlow needed), any
  image dataset with an ``image`` feature; never downloads unless ``download=True``
  (``python -m vae_jax prepare`` builds mnist and fashion_mnist from IDX files offline).
- ``encoded``: a trained run's posterior q(z|x) as float32 data (vae_jax/encoded.py).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import numpy as np

if TYPE_CHECKING:
  from vae_jax.config import ConfigLike, Data

# {'train': (x_NxHxWxC uint8, labels_N), 'test': ...}: what load_data gives and training takes.
Splits: TypeAlias = dict[str, tuple[np.ndarray, np.ndarray]]
SOURCES = ("bundled", "idx", "tfds", "encoded")
BUNDLED_DIR = Path(__file__).parent / "data_files" / "mnist"
_PREFIX = {"train": "train", "test": "t10k"}
# Where a dataset's IDX files are when no directory is given, and how to get them there.
DEFAULT_IDX_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
HOW_TO_GET = {
  "fashion_mnist": "install them with `apt-get install dataset-fashion-mnist` "
  "(Debian/Ubuntu), or put the four .gz files of "
  "https://github.com/zalandoresearch/fashion-mnist in a directory "
  "and pass --config.data.dir=DIR"
}
# IDX type codes (third byte of the magic number).
_IDX_DTYPES: dict[int, type[np.generic] | np.dtype] = {
  0x08: np.uint8,
  0x09: np.int8,
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # uint8 with 3 dims, uint8 with 1 dim
COLOR_IMAGES_MAGIC = 2052  # uint8 with 4 dims: N x H x W x C


class DataError(ValueError):
  """A data file or source is missing or malformed; the message names it."""


def _read_bytes(path: Path) -> bytes:
  """File content, gunzipped when the file starts with the gzip magic (whatever its name)."""
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"IDX file {path}: cannot read ({e.strerror})") from None
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"IDX file {path}: corrupt gzip stream ({e})") from None


def parse_idx(content: bytes, name: str, expected_magic: int | None = None) -> np.ndarray:
  """Decodes IDX bytes into an array; raises DataError naming ``name`` on any defect."""
  if len(content) < 4:
    raise DataError(
      f"IDX file {name}: truncated, {len(content)} bytes is shorter than the 4-byte magic"
    )
  magic = int.from_bytes(content[:4], "big")
  if expected_magic is not None and magic != expected_magic:
    raise DataError(
      f"IDX file {name}: expected magic {expected_magic} "
      f"({_describe_magic(expected_magic)}), found {magic}"
    )
  if content[0] != 0 or content[1] != 0:
    raise DataError(
      f"IDX file {name}: not an IDX file (magic {magic} must start with two zero bytes)"
    )
  code, ndim = content[2], content[3]
  if code not in _IDX_DTYPES:
    raise DataError(f"IDX file {name}: unknown dtype code 0x{code:02X} in magic {magic}")
  header = 4 + 4 * ndim
  if len(content) < header:
    raise DataError(
      f"IDX file {name}: truncated header, {ndim} dimensions need {header} bytes, found {len(content)}"
    )
  shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[code])
  if math.prod(max(d, 1) for d in shape) * dtype.itemsize >= 2**62:  # numpy's limit, zeros aside.
    raise DataError(f"IDX file {name}: shape {shape} is too large for any array")
  expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any header.
  found = len(content) - header
  if found < expected:
    raise DataError(
      f"IDX file {name}: truncated, shape {shape} needs {expected} data bytes, found {found}"
    )
  if found > expected:
    raise DataError(f"IDX file {name}: {found - expected} trailing bytes after shape {shape}")
  return np.frombuffer(content, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _describe_magic(magic: int) -> str:
  code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
  dtype = _IDX_DTYPES.get(code)
  return f"{np.dtype(dtype).name if dtype is not None else '?'} with {ndim} dims"


def idx_bytes(array: np.ndarray) -> bytes:
  """uint8 array -> its IDX file content (magic 0x08 dims, big-endian sizes), as MNIST's files
  are (images: 3 dims, or 4 for N x H x W x C; labels: 1); parse_idx reads it back."""
  array = np.ascontiguousarray(array)
  if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
    raise ValueError(f"IDX: expected a uint8 array, got {array.dtype} with {array.ndim} dims")
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.tobytes()


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
  """Reads one IDX file (gzipped or not) strictly: magic, dtype, header and length checked."""
  path = Path(path)
  return parse_idx(_read_bytes(path), str(path), expected_magic)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads an (images, labels) IDX pair and checks that they describe the same examples."""
  images = read_idx(images_path)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataError(
      f"IDX file {images_path}: expected uint8 images of 3 dimensions (N x H x W, "
      f"magic {IMAGES_MAGIC}) or 4 (N x H x W x C, magic {COLOR_IMAGES_MAGIC}), found "
      f"{images.dtype} with shape {images.shape}"
    )
  labels = read_idx(labels_path, LABELS_MAGIC)
  if images.shape[0] != labels.shape[0]:
    raise DataError(
      f"IDX files {images_path} and {labels_path}: {images.shape[0]} images "
      f"but {labels.shape[0]} labels"
    )
  return with_channels(images), labels.astype(np.int64)


def with_channels(images: np.ndarray) -> np.ndarray:
  """N x H x W -> N x H x W x 1; N x H x W x C as it is."""
  return images[..., None] if images.ndim == 3 else images


def default_idx_dir(name: str) -> Path:
  """The directory a dataset's IDX files are read from when none is given."""
  if name == "mnist":
    return BUNDLED_DIR
  if name not in DEFAULT_IDX_DIRS:
    raise DataError(
      f"config.data.name={name!r}: no default IDX directory (known: mnist, "
      f"{', '.join(DEFAULT_IDX_DIRS)}); set config.data.dir to a directory of IDX "
      "files, or use config.data.source='tfds'"
    )
  directory = DEFAULT_IDX_DIRS[name]
  if not (directory / "t10k-labels-idx1-ubyte.gz").is_file():
    raise DataError(f"{name}: its IDX files are not in {directory}; {HOW_TO_GET[name]}")
  return directory


def idx_paths(directory: Path, split: str) -> tuple[Path, Path]:
  """Finds a split's two files in a flat directory or torchvision's MNIST/raw layout
  (images as idx3, or idx4 for N x H x W x C)."""
  if not directory.is_dir():
    raise DataError(f"data directory {directory}: not a directory")
  prefix = _PREFIX[split]
  found = []
  for kind in ("images-idx3", "labels-idx1"):
    stem = f"{prefix}-{kind}-ubyte"
    stems = [stem, stem.replace("idx3", "idx4")] if kind == "images-idx3" else [stem]
    candidates = [
      d / (s + ext)
      for s in stems
      for d in (directory, directory / "MNIST" / "raw")
      for ext in (".gz", "")
    ]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
      raise DataError(
        f"data directory {directory}: missing {stem}[.gz] "
        f"(looked in {directory} and {directory / 'MNIST' / 'raw'})"
      )
    found.append(path)
  return found[0], found[1]


@functools.cache
def _bundled_checksums() -> dict[str, str]:
  lines = (BUNDLED_DIR / "SHA256SUMS").read_text().split("\n")
  return {name: digest for digest, name in (l.split() for l in lines if l.strip())}


@functools.cache
def _load_bundled(split: str) -> tuple[np.ndarray, np.ndarray]:
  arrays = []
  for path, magic in zip(idx_paths(BUNDLED_DIR, split), (IMAGES_MAGIC, LABELS_MAGIC)):
    content = _read_bytes(path)
    name = path.name.removesuffix(".gz")
    digest = hashlib.sha256(content).hexdigest()
    if digest != _bundled_checksums()[name]:
      raise DataError(
        f"bundled IDX file {path}: SHA-256 of its content is {digest}, "
        f"expected {_bundled_checksums()[name]} (the package copy is damaged; reinstall)"
      )
    arrays.append(parse_idx(content, str(path), magic))
  images, labels = arrays
  if images.shape[0] != labels.shape[0]:  # Cannot happen when the checksums match.
    raise DataError(f"bundled MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
  images = with_channels(images)
  images.flags.writeable = False  # Cached and shared: nobody may modify it.
  labels = labels.astype(np.int64)
  labels.flags.writeable = False
  return images, labels


def tfds_builder(name: str, data_dir: str | None = None):
  """TFDS's builder of an image dataset; DataError for an unknown name or one without an
  ``image`` feature."""
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError and its relatives.
    raise DataError(
      f"config.data.name={name!r}: not a TFDS dataset this tensorflow-datasets "
      f"knows ({' '.join(str(e).split())[:160]})"
    ) from None
  features = getattr(builder.info, "features", None)
  if features is None or "image" not in features.keys():
    keys = ", ".join(features.keys()) if features is not None else "none"
    raise DataError(
      f"TFDS dataset {name!r}: has no 'image' feature (its features: {keys}); "
      "expected an image dataset"
    )
  return builder


def load_tfds(
  name: str, split: str, data_dir: str | None = None, download: bool = False, limit: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow);
  labels are -1 for a dataset without a ``label`` feature.

  Random access: only the first ``limit`` examples (0: all) are read, a block at a time,
  into one preallocated array (no list of every example)."""
  try:
    import tensorflow_datasets as tfds  # Heavy import: only when this source is used.
  except ImportError as e:
    raise DataError(f"data source 'tfds': tensorflow-datasets is not importable ({e})") from None
  builder = tfds_builder(name, data_dir)
  if not download and not builder.is_prepared():
    raise DataError(
      f"TFDS dataset '{name}' is not prepared in {builder.data_dir} and downloads are off; "
      "use config.data.source='bundled' (MNIST shipped with vae_jax), config.data.source='idx' "
      "with config.data.dir=<directory of IDX files>, or config.data.download=True on a "
      "machine with network access"
    )
  source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=download)
  n = min(len(source), limit) if limit else len(source)
  if n == 0:
    return np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0, np.int64)
  first = np.asarray(source[0]["image"])
  if first.dtype != np.uint8:
    raise DataError(
      f"TFDS dataset '{name}' split {split}: expected uint8 images, found {first.dtype}"
    )
  images, labels = np.empty((n, *first.shape), np.uint8), np.empty(n, np.int64)
  for i, example in enumerate(_examples(source, n)):
    image = np.asarray(example["image"])
    if image.shape != first.shape:
      raise DataError(
        f"TFDS dataset '{name}' split {split}: example {i} is {image.shape}, "
        f"example 0 is {first.shape}; expected one image shape"
      )
    images[i], labels[i] = image, example["label"] if "label" in example else -1
  return images, labels


def _examples(source, n: int, block: int = 4096):
  """The first n examples of a TFDS data source, read a block at a time where it can."""
  for start in range(0, n, block):
    indices = list(range(start, min(start + block, n)))
    try:
      examples = source.__getitems__(indices)
    except (AttributeError, TypeError):  # Sources without batched reads (and TFDS's mocks).
      examples = [source[i] for i in indices]
    yield from examples


def load_split(
  source: str,
  split: str,
  data_dir: str = "",
  tfds_name: str = "mnist",
  tfds_download: bool = False,
  limit: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``split`` ('train' or 'test') from ``source``: images_NxHxWxC uint8, labels_N int64."""
  if split not in _PREFIX:
    raise DataError(f"split {split!r}: expected one of {sorted(_PREFIX)}")
  if source == "bundled" and tfds_name == "mnist":
    return _load_bundled(split)
  if source in ("bundled", "idx"):
    if source == "bundled" and tfds_name not in DEFAULT_IDX_DIRS:
      raise DataError(
        f"config.data.name={tfds_name!r}: source 'bundled' has mnist and "
        f"{', '.join(DEFAULT_IDX_DIRS)}; use config.data.source='idx' with "
        "config.data.dir, or 'tfds'"
      )
    directory = Path(data_dir) if data_dir and source == "idx" else default_idx_dir(tfds_name)
    return read_idx_pair(*idx_paths(directory, split))
  if source == "tfds":
    return load_tfds(tfds_name, split, data_dir or None, tfds_download, limit)
  if source == "encoded":
    from vae_jax.encoded import load_encoded  # Opens a run: jax, only for this source.

    return load_encoded(data_dir, split, limit)
  raise DataError(f"data source {source!r}: expected one of {', '.join(SOURCES)}")


def load_data(data: ConfigLike | Data) -> Splits:
  """{'train': (x_NxHxWxC uint8, labels_N), 'test': ...} of a config's data section, cut
  to *_examples if set. data: a parsed config.Data, or a whole config (parsed
  config.Settings, ConfigDict or dict: parsed here)."""
  if not hasattr(data, "train_examples"):  # A whole config.
    from vae_jax import config as config_lib

    data = (data if isinstance(data, config_lib.Settings) else config_lib.parse(data)).data
  section = cast("Data", data)
  splits = {}
  for split, limit in (("train", section.train_examples), ("test", section.test_examples)):
    x, y = load_split(section.source, split, section.dir, section.name, section.download, limit)
    splits[split] = (x[:limit], y[:limit]) if limit else (x, y)
  for split, (x, _) in splits.items():
    if 0 in x.shape[1:]:
      raise DataError(f"data: {split} images have shape {x.shape[1:]}; expected H, W and C >= 1")
  if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
    raise DataError(
      f"data: train images are {splits['train'][0].shape[1:]} but test images are "
      f"{splits['test'][0].shape[1:]}; expected one image shape"
    )
  return splits
