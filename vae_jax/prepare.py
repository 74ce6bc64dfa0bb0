"""``python -m vae_jax prepare``: a TFDS dataset (ArrayRecord) built from local IDX files.

TFDS's own ``mnist`` / ``fashion_mnist`` builders download their files; the builders here
are the same datasets (name, version, features) with ``_split_generators`` reading a local
IDX directory instead, and images handed to TFDS as PNG bytes encoded by PIL, so neither
TensorFlow nor a network is needed. ``tfds.data_source`` then reads the result (also
without TensorFlow). TFDS writes into ``incomplete.*`` and renames when every split is
written, so a build killed half-way is never read as prepared, and building again works.
Any other TFDS dataset is prepared by TFDS itself, with ``--download``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from vae_jax import data

LOCAL = ("mnist", "fashion_mnist")  # Datasets built here from IDX files.


def _local_builder(name: str, idx_dir: Path, tfds_dir: Path):
  """A TFDS builder of ``name`` whose splits are read from idx_dir."""
  import tensorflow_datasets as tfds
  from PIL import Image
  from tensorflow_datasets.image_classification import mnist as mnist_lib

  base: Any = mnist_lib.MNIST if name == "mnist" else mnist_lib.FashionMNIST  # A dynamic base.

  class FromIdx(base, skip_registration=True):  # type: ignore[call-arg]  # untyped tfds base class
    name = base.name  # Same name and version as TFDS's.

    def _info(self):  # TFDS's info, unshuffled: the IDX files' order, as idx reads them.
      info = super()._info()
      return tfds.core.DatasetInfo(
        builder=self,
        description=info.description,
        features=info.features,
        supervised_keys=info.supervised_keys,
        homepage=info.homepage,
        citation=info.citation,
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      return {split: self._examples(split) for split in ("train", "test")}

    def _examples(self, split):
      images, labels = data.read_idx_pair(*data.idx_paths(idx_dir, split))
      for i, (image, label) in enumerate(zip(images, labels)):
        png = io.BytesIO()
        Image.fromarray(image[..., 0]).save(png, format="PNG")
        png.seek(0)
        yield i, {"image": png, "label": int(label)}

  return FromIdx(data_dir=str(tfds_dir), file_format="array_record")


def prepare(
  name: str, tfds_dir: str | Path, from_dir: str | Path | None = None, download: bool = False
) -> Path:
  """Builds ``name`` in tfds_dir; returns the prepared dataset's directory."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise data.DataError(f"prepare: tensorflow-datasets is not importable ({e})") from None
  tfds_dir = Path(tfds_dir).absolute()
  if name in LOCAL and not download:
    idx_dir = Path(from_dir) if from_dir else data.default_idx_dir(name)
    data.read_idx_pair(*data.idx_paths(idx_dir, "test"))  # Refuses bad files in one line, first.
    builder = _local_builder(name, idx_dir, tfds_dir)
  elif download:
    builder = data.tfds_builder(name, str(tfds_dir))
  else:
    raise data.DataError(
      f"prepare --dataset {name}: built here from IDX files only for "
      f"{', '.join(LOCAL)}; pass --download to let TFDS fetch and build it"
    )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return Path(builder.data_dir)
