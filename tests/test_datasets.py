"""Datasets beyond MNIST: Fashion-MNIST from the system's copy, TFDS datasets prepared
offline from IDX files, colour images from 4-dimensional IDX files, bad datasets refused.

The Fashion-MNIST tests read the real files (Debian's dataset-fashion-mnist, which
.ci/setup installs); under CI=true a missing file is a failure, not a skip. The CLI runs in
this process (conftest.cli) except where a build is killed.
"""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli, synthetic_split, write_idx_dir

from vae_jax import data

FASHION = data.DEFAULT_IDX_DIRS["fashion_mnist"]


@pytest.fixture(scope="module")
def fashion_dir():
  if not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file():
    message = f"Fashion-MNIST is not in {FASHION} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return FASHION


def test_fashion_mnist_by_name_from_the_system_copy(fashion_dir):
  images, labels = data.load_split("bundled", "test", tfds_name="fashion_mnist")
  assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [1000] * 10  # Ten balanced classes.
  same, _ = data.load_split("idx", "test", str(fashion_dir), "fashion_mnist")
  np.testing.assert_array_equal(same, images)
  mnist, _ = data.load_split("bundled", "test")
  assert not np.array_equal(mnist, images)


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch, tmp_path):
  monkeypatch.setitem(data.DEFAULT_IDX_DIRS, "fashion_mnist", tmp_path)
  with pytest.raises(
    data.DataError,
    match=r"fashion_mnist: its IDX files are not in .*"
    r"apt-get install dataset-fashion-mnist",
  ):
    data.load_split("bundled", "train", tfds_name="fashion_mnist")


def test_train_on_fashion_mnist_by_name_from_the_cli(fashion_dir, tmp_path):
  result = cli(
    "train",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.name=fashion_mnist",
    "--config.data.train_examples=512",
    "--config.data.test_examples=128",
    "--config.optim.num_epochs=1",
    "--config.run.progress=False",
  )
  assert result.returncode == 0, result.stderr
  assert "====> Epoch: 1" in result.stdout and (tmp_path / "run" / "sample_1.png").exists()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_prepared_tfds_gives_the_idx_arrays_image_for_image(
  name, fashion_dir, tmp_path, monkeypatch
):
  """The dataset's default IDX copy, sliced to its first 600 + 200 real images (building all
  70,000 costs ~17 s and shows nothing more), prepared by name and read back through TFDS."""
  pytest.importorskip("tensorflow_datasets")
  sliced = {
    split: tuple(a[:n] for a in data.load_split("bundled", split, "", name))
    for split, n in (("train", 600), ("test", 200))
  }
  where = write_idx_dir(tmp_path / "idx", sliced)
  if name == "mnist":
    monkeypatch.setattr(data, "BUNDLED_DIR", where)
  else:
    monkeypatch.setitem(data.DEFAULT_IDX_DIRS, name, where)
  result = cli("prepare", f"--dataset={name}", f"--tfds_dir={tmp_path / 'tfds'}")
  assert result.returncode == 0, result.stderr
  assert f"--config.data.source=tfds --config.data.name={name}" in result.stdout
  for split in ("train", "test"):
    from_tfds = data.load_split("tfds", split, str(tmp_path / "tfds"), name)
    for a, b in zip(from_tfds, sliced[split]):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)


def test_a_build_killed_half_way_is_never_read_and_building_again_works(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  splits = {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}
  idx_dir = write_idx_dir(tmp_path / "idx", splits)
  marker = tmp_path / "paused"
  code = f"""
import pathlib, time
from vae_jax import data, prepare
read = data.read_idx_pair
def slow(*paths):  # The test split's files are read after the train split was written.
  if "t10k" in str(paths[0]) and pathlib.Path({str(tmp_path / "calls")!r}).exists():
    pathlib.Path({str(marker)!r}).write_text("paused")
    time.sleep(600)
  pathlib.Path({str(tmp_path / "calls")!r}).write_text("x")
  return read(*paths)
data.read_idx_pair = slow
prepare.prepare("mnist", {str(tmp_path / "tfds")!r}, {str(idx_dir)!r})
"""
  proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
  deadline = time.monotonic() + 120
  while not marker.exists():
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert list((tmp_path / "tfds" / "mnist").glob("incomplete.*"))  # Killed mid-build.
  with pytest.raises(data.DataError, match="TFDS dataset 'mnist' is not prepared"):
    data.load_split("tfds", "train", str(tmp_path / "tfds"), "mnist")
  result = cli("prepare", "--dataset=mnist", f"--from={idx_dir}", f"--tfds_dir={tmp_path / 'tfds'}")
  assert result.returncode == 0, result.stderr
  for split in ("train", "test"):
    images, labels = data.load_split("tfds", split, str(tmp_path / "tfds"), "mnist")
    np.testing.assert_array_equal(images, splits[split][0])
    np.testing.assert_array_equal(labels, splits[split][1])


@pytest.mark.parametrize(
  "name, message",
  [
    ("no_such_dataset", "config.data.name='no_such_dataset': not a TFDS dataset"),
    ("imdb_reviews", "TFDS dataset 'imdb_reviews': has no 'image' feature"),
  ],
)
def test_a_bad_tfds_dataset_is_one_line_before_anything_is_written(name, message, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  workdir = tmp_path / "run"
  result = cli(
    "train",
    f"--workdir={workdir}",
    "--config.data.source=tfds",
    f"--config.data.name={name}",
    f"--config.data.dir={tmp_path / 'tfds'}",
  )
  assert result.returncode == 2
  assert result.stderr.startswith("vae_jax: error: ") and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not workdir.exists()


def test_prepare_refuses_what_it_cannot_build_offline(tmp_path):
  result = cli("prepare", "--dataset=cifar10", f"--tfds_dir={tmp_path}")
  assert result.returncode == 2
  assert "built here from IDX files only for mnist, fashion_mnist; pass --download" in result.stderr
  result = cli("prepare", "--dataset=fashion_mnist", f"--from={tmp_path}", f"--tfds_dir={tmp_path}")
  assert result.returncode == 2 and "missing t10k-images-idx3-ubyte[.gz]" in result.stderr


def test_colour_idx_files_train_the_conv_model_with_colour_images(tmp_path):
  """32 x 32 x 3 images as 4-dimensional IDX files, through the CLI: the conv model trains,
  the PNG grids and TensorBoard's images are RGB."""
  from PIL import Image

  splits = {
    "train": synthetic_split(96, 0, (32, 32, 3)),
    "test": synthetic_split(40, 1, (32, 32, 3)),
  }
  idx_dir = write_idx_dir(tmp_path / "idx", splits)
  x, _ = data.load_split("idx", "train", str(idx_dir))
  np.testing.assert_array_equal(x, splits["train"][0])  # Stored with 4 dimensions, read back.
  workdir = tmp_path / "run"
  result = cli(
    "train",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.dir={idx_dir}",
    "--config.model.name=conv",
    "--config.optim.batch_size=32",
    "--config.optim.num_epochs=1",
    "--config.run.progress=False",
  )
  assert result.returncode == 0, result.stderr
  for name in ("sample_1.png", "reconstruction_1.png"):
    assert Image.open(workdir / name).mode == "RGB"
  assert Image.open(workdir / "sample_1.png").size == (8 * 34 + 2, 8 * 34 + 2)  # 8 x 8 of 32 x 32.
  from vae_jax import training

  _, state, _, meta = training.restore_run(workdir)
  assert state.params["decoder"]["deconv_1"]["kernel"].shape[-1] == 3  # Three output channels.
  assert np.isfinite(meta["records"][0]["test_loss"])
  if (workdir / "tensorboard").is_dir():
    from test_train import read_events

    grids = [v for tag, _, v in read_events(workdir / "tensorboard") if tag == "sample"]
    assert grids and Image.open(io.BytesIO(grids[0])).mode == "RGB"


def test_studies_and_experiments_take_the_dataset(fashion_dir, tmp_path):
  study = tmp_path / "study.py"
  study.write_text(
    "from vae_jax import sweep\n"
    "def get_config():\n"
    "  return sweep.make_study(name='tiny', question='?', axes={'objective.beta': [1.0, 2.0]},\n"
    "                          seeds=1, base={'optim.num_epochs': 1, 'data.train_examples': 256,\n"
    "                                         'data.test_examples': 64})\n"
  )
  result = cli(
    "sweep", f"--config={study}", f"--workdir={tmp_path / 'sweep'}", "--dataset=fashion_mnist"
  )
  assert result.returncode == 0, result.stderr
  import json

  configs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("config.json")]
  assert len(configs) == 2 and {c["data"]["name"] for c in configs} == {"fashion_mnist"}
  from experiments import common

  args = common.parser("doc", "anomaly", 1).parse_args(["--dataset", "fashion_mnist"])
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    splits = common.prepare(args)
  finally:
    os.chdir(cwd)
  assert args.workdir.as_posix() == "runs/anomaly_fashion_mnist"
  np.testing.assert_array_equal(
    splits["test"][0], data.load_split("bundled", "test", "", "fashion_mnist")[0]
  )
  assert common.config_with({}).data.name == "fashion_mnist"
  common.DATA.clear()
