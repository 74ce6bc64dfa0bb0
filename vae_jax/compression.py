"""Lossless compression of images into a file with a trained VAE (bits back: vae_jax/bitsback.py).

  python -m vae_jax compress --workdir RUN --input IMAGES --out FILE [--overwrite]
  python -m vae_jax decompress --workdir RUN --input FILE --out DIR_OR_IDX [--overwrite]

IMAGES: an IDX file of uint8 images (N x H x W, or N x H x W x C), a directory of PNGs (in
name order), or ``test``: the run's test split (for a run trained on binarized data,
binarized with the evaluation's fixed key, as 0/255: the standard protocol). The run's
likelihood decides what it codes: 'bernoulli' binary images (two values, 0 and 1 or 0 and
255), 'beta_binomial' or 'discretized_logistic' any uint8 image; the shape must be the model's. decompress
writes an IDX file (OUT ending in -ubyte, .idx or .gz) or a directory of PNGs (the original
names when they were PNGs): the same pixels, bit for bit.

The file: MAGIC, a little-endian uint32 header length, the header (JSON: format, image
shape, count, likelihood, binary values, latent precision, batch sizes, PNG names, the
model's SHA-256 and the environment the floats came from), the ANS stack's uint32 words
(little-endian) and a CRC-32 of all that precedes it. decompress refuses, in one line and
before writing anything, a file that is not one (magic), is cut or damaged (lengths, CRC),
was coded by another model (SHA-256 of the parameters) or in another environment (jax,
jaxlib, backend, device, XLA_FLAGS, CPU model and flags: the network's float outputs, and so
every probability the coder used, must be bit-identical), or an output that exists.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vae_jax import bitsback, checkpoint, cpu_kernels, data, evaluate, files, images
from vae_jax.step import TrainState, model_of

MAGIC = b"VJXBBANS"
FORMAT = 2  # 2: the tables by blocked sums, in calls of at most 8,192 pixels, as float64.
IDX_SUFFIXES = ("-ubyte", ".idx", ".gz")


class CompressionError(ValueError):
  """A file, an image or an output is unusable; the message names it."""


def environment() -> dict[str, str]:
  """What the network's float outputs depend on besides the parameters (checked on decode)."""
  import jaxlib

  info = cpu_kernels.cpu_info()
  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.local_devices()[0].device_kind,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "cpu": info["model"],
    "cpu_flags_sha256": hashlib.sha256(info["flags"].encode()).hexdigest()[:16],
  }


def likelihood_of(state: TrainState, likelihood: str) -> str:
  """The run's likelihood, if its model can code: one Gaussian latent layer under N(0, I), no
  labels, a discrete likelihood; CompressionError otherwise."""
  model = model_of(state)
  if not model.analytic_kl or model.conditional:
    raise CompressionError(
      f"model {type(model).__name__}: bits-back coding here needs one Gaussian latent layer "
      "with the N(0, I) prior and no labels (mlp or conv with config.prior.name='normal' and "
      "config.posterior.name='gaussian', or a model of yours like them)"
    )
  if likelihood not in bitsback.LIKELIHOODS:
    raise CompressionError(
      f"the run's likelihood is {likelihood!r}; compression needs a discrete one: "
      "'bernoulli' (binary images), 'beta_binomial' or 'discretized_logistic' (uint8 images)"
    )
  return likelihood


def png_name(name) -> bool:
  """Whether name is one compress reads and decompress writes: a plain file name (no
  directory, not hidden) ending in .png, any case."""
  return (
    isinstance(name, str)
    and name == os.path.basename(name)
    and not name.startswith(".")
    and "\0" not in name
    and name.lower().endswith(".png")
  )


def to_symbols(images_u8: np.ndarray, likelihood: str, where: str) -> tuple[np.ndarray, list[int]]:
  """(symbols, the uint8 value of each symbol) of images for the likelihood, or refused."""
  if likelihood != "bernoulli":
    return images_u8.astype(np.int32), []
  present = np.unique(images_u8)
  for high in (255, 1):
    if set(present.tolist()) <= {0, high}:
      return (images_u8 == high).astype(np.int32), [0, high]
  raise CompressionError(
    f"{where}: has {len(present)} gray levels (e.g. {present[1:3].tolist()}); the run's "
    "Bernoulli model codes binary images (two values: 0 and 1, or 0 and 255)"
  )


def compress_images(state: TrainState, images_u8, likelihood: str, names=None) -> bytes:
  """The file's bytes for uint8 images N x H x W x C of the model's shape (see above)."""
  images_u8 = np.asarray(images_u8)
  model = model_of(state)
  if images_u8.dtype != np.uint8 or images_u8.shape[1:] != tuple(model.image_shape):
    raise CompressionError(
      f"images: expected uint8 images of the model's shape {tuple(model.image_shape)}, got "
      f"{images_u8.dtype} {images_u8.shape[1:]}"
    )
  if not len(images_u8):
    raise CompressionError("images: none to compress")
  symbols, values = to_symbols(images_u8, likelihood_of(state, likelihood), "images")
  codec = bitsback.Codec(state.params, state.apply_fn, likelihood, model.latent_dim)

  words, sizes = codec.encode(symbols)
  header = {
    "format": FORMAT,
    "count": len(images_u8),
    "image_shape": list(images_u8.shape[1:]),
    "likelihood": likelihood,
    "values": values,
    "precision": bitsback.PRIOR_PRECISION,
    "batches": sizes,
    "names": list(names) if names is not None else None,
    "model_sha256": checkpoint.tree_sha256(state.params),
    "environment": environment(),
  }
  head = json.dumps(header, sort_keys=True).encode()
  body = MAGIC + struct.pack("<I", len(head)) + head + np.asarray(words, "<u4").tobytes()
  return body + struct.pack("<I", zlib.crc32(body))


def read_header(blob: bytes, where: str) -> tuple[dict[str, Any], np.ndarray]:
  """(header, words) of a file's bytes; CompressionError for anything but an intact file."""
  if blob[: len(MAGIC)] != MAGIC:
    raise CompressionError(f"{where}: not a vae_jax compressed file (no {MAGIC.decode()} magic)")
  if len(blob) < len(MAGIC) + 8:
    raise CompressionError(f"{where}: truncated ({len(blob)} bytes)")
  if zlib.crc32(blob[:-4]) != struct.unpack("<I", blob[-4:])[0]:
    raise CompressionError(f"{where}: damaged or truncated (its CRC-32 does not match)")
  (length,) = struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])
  start = len(MAGIC) + 4
  payload = blob[start + length : -4]
  try:
    header = json.loads(blob[start : start + length])
  except ValueError:
    header = None
  if not (
    well_formed(header) and len(payload) % 4 == 0 and len(payload) >= 4 * bitsback.INITIAL_WORDS
  ):
    raise CompressionError(f"{where}: its header is damaged or of another format version")
  return header, np.frombuffer(payload, "<u4").astype(np.uint32)


def well_formed(header) -> bool:
  """Whether a parsed header has every field, each of its type and in its range."""
  ints = lambda v, low, high: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
  try:
    return (
      header["format"] == FORMAT
      and ints(header["count"], 0, 2**40)
      and all(ints(b, 1, bitsback.MAX_BATCH) for b in header["batches"])
      and sum(header["batches"]) == header["count"]
      and len(header["image_shape"]) == 3
      and all(ints(d, 1, 2**16) for d in header["image_shape"])
      and header["likelihood"] in bitsback.LIKELIHOODS
      and header["precision"] == bitsback.PRIOR_PRECISION
      and header["values"] in (([],) if header["likelihood"] != "bernoulli" else ([0, 1], [0, 255]))
      and (
        header["names"] is None
        or (
          len(header["names"]) == header["count"]
          and all(png_name(n) for n in header["names"])
          and len(set(header["names"])) == len(header["names"])
        )
      )
      and isinstance(header["model_sha256"], str)
      and isinstance(header["environment"], dict)
    )
  except (KeyError, TypeError):
    return False


def decompress_bytes(
  state: TrainState, blob: bytes, where: str = "file", likelihood: str | None = None
) -> tuple[np.ndarray, list | None]:
  """(images_u8 N x H x W x C, their PNG names or None) of a compressed file's bytes;
  likelihood: the run's, which the file's must be (None: the file's is taken)."""
  header, words = read_header(blob, where)
  model = model_of(state)
  if likelihood is not None and header["likelihood"] != likelihood:
    raise CompressionError(
      f"{where}: was coded with the {header['likelihood']} likelihood; this run's is {likelihood}"
    )
  if header["model_sha256"] != checkpoint.tree_sha256(state.params):
    raise CompressionError(
      f"{where}: was coded by another model (parameters' SHA-256 {header['model_sha256'][:12]}..., "
      f"this run's {checkpoint.tree_sha256(state.params)[:12]}...); decode it with that run"
    )
  if tuple(header["image_shape"]) != tuple(model.image_shape):
    raise CompressionError(
      f"{where}: holds {tuple(header['image_shape'])} images; the model's are {tuple(model.image_shape)}"
    )
  here = environment()
  differ = [
    f"{k} {header['environment'].get(k)!r} here {v!r}"
    for k, v in here.items()
    if header["environment"].get(k) != v
  ]
  if differ:
    raise CompressionError(
      f"{where}: was coded in another environment ({'; '.join(differ)}); its probabilities "
      "come from float outputs that must be bit-identical: decode it where it was coded"
    )
  names = header["names"]
  codec = bitsback.Codec(state.params, state.apply_fn, header["likelihood"], model.latent_dim)
  try:
    symbols = codec.decode(words, header["batches"], tuple(header["image_shape"]))
  except Exception as e:  # The coder's own errors on a code it cannot read: one answer.
    raise CompressionError(
      f"{where}: the code cannot be decoded ({e}): the file is corrupt"
    ) from None
  values = header["values"]
  out = symbols.astype(np.uint8) if not values else np.asarray(values, np.uint8)[symbols]
  return out, names


def read_images(source: str, run) -> tuple[np.ndarray, list[str] | None]:
  """(images_u8, PNG names or None) of compress's --input: 'test', an IDX file, a PNG directory."""
  if source == "test":
    x_u8, _ = data.load_data(run.settings.data)["test"]
    if run.settings.data.binarize:  # The standard protocol's one binarization, as 0/255.
      x_u8 = (evaluate.binarize(x_u8, jax.random.key(evaluate.BINARIZE_SEED)) * 255).astype(
        np.uint8
      )
    return np.asarray(x_u8), None
  path = Path(source)
  if path.is_dir():
    names = sorted(p.name for p in path.iterdir() if png_name(p.name) and p.is_file())
    if not names:
      raise CompressionError(f"--input {path}: a directory without PNG files")
    try:
      return np.stack([images.read_png(path / n, run.image_shape) for n in names]), names
    except ValueError as e:
      raise CompressionError(f"--input {e}") from None
  if not path.is_file():
    raise CompressionError(
      f"--input {path}: no such file or directory (expected an IDX file, a directory of PNGs, or 'test')"
    )
  try:
    array = data.read_idx(path)
  except data.DataError as e:
    raise CompressionError(str(e)) from None
  if array.dtype != np.uint8 or array.ndim not in (3, 4):
    raise CompressionError(
      f"--input {path}: expected uint8 images (N x H x W or N x H x W x C), found {array.dtype} {array.shape}"
    )
  return data.with_channels(array), None


def _check_new(out: Path, overwrite: bool) -> None:
  if out.is_symlink() or (out.exists() and not overwrite):
    raise CompressionError(
      f"--out {out}: exists; vae_jax does not replace it unless --overwrite is given"
    )
  if not out.parent.is_dir():
    raise CompressionError(f"--out {out}: directory {out.parent} does not exist")


def compress(
  workdir, source: str, out, which: str = "latest", overwrite: bool = False
) -> dict[str, Any]:
  """python -m vae_jax compress: the file, and its figures (bits per dimension, images/s)."""
  from vae_jax.runs import open_run

  out = Path(out)
  _check_new(out, overwrite)
  run = open_run(workdir, which)
  likelihood = likelihood_of(run.state, run.settings.objective[1].get("likelihood", "bernoulli"))
  x_u8, names = read_images(source, run)
  start = time.perf_counter()
  with jax.default_matmul_precision(run.settings.run.matmul_precision):
    blob = compress_images(run.state, x_u8, likelihood, names)
  seconds = time.perf_counter() - start
  files.write_atomic(out, blob, replace=overwrite)
  return {
    "images": len(x_u8),
    "bytes": len(blob),
    "bits_per_dim": 8 * len(blob) / x_u8.size,
    "seconds": seconds,
    "images_per_second": len(x_u8) / seconds,
    "out": str(out),
  }


def decompress(
  workdir, source, out, which: str = "latest", overwrite: bool = False
) -> dict[str, Any]:
  """python -m vae_jax decompress: the images back, as an IDX file or a directory of PNGs."""
  from vae_jax.runs import open_run

  source, out = Path(source), Path(out)
  as_idx = out.name.endswith(IDX_SUFFIXES)
  if as_idx:
    _check_new(out, overwrite)
  elif out.is_symlink() or out.is_file() or (out.is_dir() and any(out.iterdir()) and not overwrite):
    raise CompressionError(
      f"--out {out}: exists; vae_jax does not write into it unless --overwrite is given"
    )
  elif not out.parent.is_dir():
    raise CompressionError(f"--out {out}: directory {out.parent} does not exist")
  try:
    blob = source.read_bytes()
  except OSError as e:
    raise CompressionError(f"--input {source}: cannot read ({e.strerror})") from None
  run = open_run(workdir, which)
  start = time.perf_counter()
  with jax.default_matmul_precision(run.settings.run.matmul_precision):
    likelihood = run.settings.objective[1].get("likelihood", "bernoulli")
    x_u8, names = decompress_bytes(run.state, blob, f"--input {source}", likelihood)
  seconds = time.perf_counter() - start
  if as_idx:
    content = data.idx_bytes(x_u8[..., 0] if x_u8.shape[-1] == 1 else x_u8)
    files.write_atomic(
      out, gzip.compress(content, mtime=0) if out.suffix == ".gz" else content, replace=overwrite
    )
  else:
    out.mkdir(exist_ok=True)
    width = len(str(max(len(x_u8) - 1, 0)))
    for i, image in enumerate(x_u8):
      images.save_png(
        out / (names[i] if names else f"{i:0{width}d}.png"),
        image[..., 0] if image.shape[-1] == 1 else image,
      )
  return {
    "images": len(x_u8),
    "seconds": seconds,
    "images_per_second": len(x_u8) / seconds,
    "out": str(out),
  }
