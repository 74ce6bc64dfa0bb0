"""Training data augmentation: classical (random shifts and rotations) and generated (a
conditional model's samples of every class), and the labelled dataset a user adds to theirs.

  python -m vae_jax augment --workdir RUN --out DIR [--num 1000] [--seed 0]

writes ``DIR/train-images-idx3-ubyte.gz`` and ``DIR/train-labels-idx1-ubyte.gz`` (MNIST's IDX
format; idx4 for colour images): ``--num`` decoded images of each class of the run's
conditional model (cmlp, cconv, or an m2 run), pixels the decoder's mean rounded to uint8.
A file that exists there is never replaced: the command is refused in one line.
experiments/augmentation.py measures what such images (and the classical transforms) do for
a classifier trained on few labels.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from vae_jax import api, data, files
from vae_jax.step import TrainState, model_of

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def shift_rotate(
  x_BxHxWxC: jax.Array, key: jax.Array, max_shift: float = 2.0, max_degrees: float = 15.0
) -> jax.Array:
  """Each image shifted by U(-max_shift, max_shift) pixels per axis and rotated about its
  centre by U(-max_degrees, max_degrees): the classical augmentation of digit classifiers."""
  batch = x_BxHxWxC.shape[0]
  key_shift, key_angle = jax.random.split(key)
  shift_Bx2 = jax.random.uniform(key_shift, (batch, 2), minval=-max_shift, maxval=max_shift)
  degrees_B = jax.random.uniform(key_angle, (batch,), minval=-max_degrees, maxval=max_degrees)
  return move(x_BxHxWxC, shift_Bx2, degrees_B)


def move(x_BxHxWxC: jax.Array, shift_Bx2: jax.Array, degrees_B: jax.Array) -> jax.Array:
  """Image b shifted by shift_Bx2[b] pixels (rows, columns) and rotated counterclockwise by
  degrees_B[b] about its centre; bilinear, zeros outside."""
  _, height, width, _ = x_BxHxWxC.shape
  rows_HxW, cols_HxW = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  centre_r, centre_c = (height - 1) / 2, (width - 1) / 2

  def one(image_HxWxC, shift_2, degrees):
    # Output pixel p reads the input at the inverse map: p - centre - shift turned back by
    # the angle, + centre (rows point down: as np.rot90 turns an image at 90 degrees).
    angle = jnp.deg2rad(degrees)
    r, c = rows_HxW - centre_r - shift_2[0], cols_HxW - centre_c - shift_2[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    coords = [cos * r + sin * c + centre_r, -sin * r + cos * c + centre_c]
    channels = [
      ndimage.map_coordinates(image_HxWxC[..., k], coords, order=1, mode="constant", cval=0.0)
      for k in range(image_HxWxC.shape[-1])
    ]
    return jnp.stack(channels, axis=-1)

  return jax.vmap(one)(x_BxHxWxC, shift_Bx2, degrees_B)


def to_uint8(x_NxHxWxC) -> np.ndarray:
  """Pixels in [0, 1] -> uint8 (rounded), as the datasets store them."""
  return np.clip(np.rint(np.asarray(x_NxHxWxC, np.float32) * 255), 0, 255).astype(np.uint8)


def class_labels(num_classes: int, per_class: int) -> np.ndarray:
  """The labels generate draws for: per_class of each class, class by class (int64)."""
  return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def generate(state: TrainState, per_class: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(images_NxHxWxC uint8, labels_N int64): per_class decoded draws z ~ N(0, I) of each class
  of a conditional model, class by class (N = per_class x classes)."""
  model = model_of(state)
  if not model.conditional:
    raise ValueError(
      f"augment: model {type(model).__name__} is not conditional, so its samples have no "
      "label; train a conditional model (cmlp, cconv, or the m2 objective)"
    )
  labels_N = class_labels(model.num_classes, per_class)
  return to_uint8(api.sample(state, len(labels_N), key, labels_N)), labels_N


def generate_m1m2(
  m2_state: TrainState, m1_state: TrainState, active_L, per_class: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
  """generate's images and labels from M1+M2 (Kingma et al. 2014): for y and z2 ~ N(0, I),
  z1 = the mean of M2's p(z1|y, z2) on M1's active units (active_L, vae_jax.encoded) and 0,
  the prior's mean, on the others; the image, M1's decoder mean at z1."""
  labels_N = class_labels(model_of(m2_state).num_classes, per_class)
  z1_NxA = api.sample(m2_state, len(labels_N), key, labels_N).reshape(len(labels_N), -1)
  z1_NxL = np.zeros((len(labels_N), len(active_L)), np.float32)
  z1_NxL[:, np.asarray(active_L)] = z1_NxA
  return to_uint8(api.decode(m1_state, z1_NxL)), labels_N


def dataset_files(channels: int) -> tuple[str, str]:
  """The IDX names augment writes: images (idx3 for gray, idx4 for colour) and labels."""
  return (FILES[0] if channels == 1 else FILES[0].replace("idx3", "idx4"), FILES[1])


def check_out_dir(out: str | os.PathLike, names: tuple[str, ...] = FILES) -> Path:
  """The output directory, refused (ValueError, one line) if it holds a file of names, is not
  a directory, or its parent does not exist; nothing is written here."""
  out = Path(out)
  if out.exists() and (out.is_symlink() or not out.is_dir()):
    raise ValueError(f"--out {out}: exists and is not a directory")
  if not out.exists() and not out.parent.is_dir():
    raise ValueError(f"--out {out}: directory {out.parent} does not exist")
  taken = [name for name in names if os.path.lexists(out / name)]
  if taken:
    raise ValueError(
      f"--out {out}: already holds {', '.join(taken)}; vae_jax never replaces a dataset "
      "file: choose another directory or remove them"
    )
  return out


def write_dataset(out: str | os.PathLike, images_NxHxWxC: np.ndarray, labels_N: np.ndarray) -> Path:
  """The two IDX files (gzipped) of a labelled training set in directory out (created if
  missing): each whole or absent (files.write_atomic), neither replacing a file, and the
  images removed again if the labels cannot be written."""
  names = dataset_files(images_NxHxWxC.shape[-1])
  out = check_out_dir(out, names)
  if labels_N.max(initial=0) > 255 or labels_N.min(initial=0) < 0:
    raise ValueError("labels: the IDX label file holds classes 0 to 255")
  images = images_NxHxWxC[..., 0] if images_NxHxWxC.shape[-1] == 1 else images_NxHxWxC
  contents = [
    gzip.compress(data.idx_bytes(a), mtime=0) for a in (images, labels_N.astype(np.uint8))
  ]
  out.mkdir(exist_ok=True)
  files.write_atomic(out / names[0], contents[0], replace=False)
  try:
    files.write_atomic(out / names[1], contents[1], replace=False)
  except OSError:
    (out / names[0]).unlink()
    raise
  return out


def augment(workdir, out, per_class: int = 1000, seed: int = 0, which: str = "latest") -> Path:
  """python -m vae_jax augment: write per_class generated images of every class of a run's
  conditional model, with their labels, as IDX files in directory out (key = key(seed))."""
  from vae_jax.runs import open_run

  check_out_dir(out)
  if not 1 <= per_class < 2**31:
    raise ValueError(f"--num {per_class}: expected a number of images per class >= 1")
  run = open_run(workdir, which)
  if run.settings.data.source == "encoded":
    raise ValueError(
      f"augment: run {workdir} models another run's latent codes, not images; augment a "
      "conditional model of the images (cmlp, cconv, m2 on images)"
    )
  model = model_of(run.state)
  pixels = per_class * getattr(model, "num_classes", 1) * math.prod(run.image_shape)
  if pixels * 5 > 2**34:  # float32 images and their uint8 copy: refused past 16 GiB.
    raise ValueError(f"--num {per_class}: {pixels:,} pixels are more than this command holds")
  images, labels = generate(run.state, per_class, jax.random.key(seed))
  return write_dataset(out, images, labels)
