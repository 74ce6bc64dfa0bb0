"""Hostile input: every case answers exit status 2 (1 for a non-finite loss) and exactly one
``vae_jax: error:`` line, with no file created or changed. The CLI's entry point runs in
this process (only the message and the files matter here); kills and signals, where the
process itself matters, are in test_checkpoint.py."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_split, tree_bytes, write_idx, write_idx_dir

from vae_jax import __main__ as cli, workdir as workdir_lib


def run_main(capsys, argv):
  """(status, stderr lines) of the CLI run in this process."""
  status = cli.main([str(a) for a in argv])
  return status, capsys.readouterr().err.strip().splitlines()


def train(workdir, data_dir, *extra):
  return [
    "train",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.dir={data_dir}",
    "--config.optim.num_epochs=1",
    "--config.run.progress=False",
    *extra,
  ]


# ---- data: each case writes a damaged IDX directory ----


def _dir(tmp_path, splits=None):
  return write_idx_dir(
    tmp_path / "data", splits or {"train": synthetic_split(64, 0), "test": synthetic_split(32, 1)}
  )


def _replace(directory, name, content: bytes, compress=True):
  (directory / name).write_bytes(gzip.compress(content) if compress else content)


def _header(magic, *dims):
  return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


DATA_CASES = {
  "missing directory": (lambda d: d.rename(d.with_name("gone")), "not a directory"),
  "missing labels file": (
    lambda d: (d / "train-labels-idx1-ubyte.gz").unlink(),
    "missing train-labels-idx1-ubyte",
  ),
  "labels magic in the images file": (
    lambda d: _replace(d, "train-images-idx3-ubyte.gz", _header(2049, 64, 28, 28)),
    "train-images-idx3-ubyte.gz: truncated",
  ),
  "images magic in the labels file": (
    lambda d: _replace(d, "train-labels-idx1-ubyte.gz", _header(2051, 8, 2, 4) + b"\0" * 64),
    "expected magic 2049",
  ),
  "truncated images": (
    lambda d: _replace(d, "train-images-idx3-ubyte.gz", _header(2051, 64, 28, 28) + b"\0" * 100),
    "truncated",
  ),
  "trailing bytes": (
    lambda d: _replace(d, "t10k-labels-idx1-ubyte.gz", _header(2049, 32) + b"\1" * 33),
    "trailing bytes",
  ),
  "not gzip inside": (
    lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bjunk"),
    "corrupt gzip stream",
  ),
  "damaged deflate body": (
    lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
      (lambda z: z[:20] + bytes(b ^ 0xFF for b in z[20:60]) + z[60:])(
        gzip.compress(_header(2051, 64, 28, 28) + bytes(range(256)) * 196)
      )
    ),
    "corrupt gzip stream",
  ),
  "count mismatch": (
    lambda d: _replace(d, "train-labels-idx1-ubyte.gz", _header(2049, 63) + b"\0" * 63),
    "64 images but 63 labels",
  ),
  "header dimensions overflow": (
    lambda d: _replace(
      d, "train-images-idx3-ubyte.gz", _header(2051, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    ),
    "is too large for any array",
  ),
  "images of zero size": (
    lambda d: (
      _replace(d, "train-images-idx3-ubyte.gz", _header(2051, 64, 0, 0)),
      _replace(d, "t10k-images-idx3-ubyte.gz", _header(2051, 32, 0, 0)),
    ),
    "expected H, W and C >= 1",
  ),
  "test split with no images": (
    lambda d: (
      _replace(d, "t10k-images-idx3-ubyte.gz", _header(2051, 0, 28, 28)),
      _replace(d, "t10k-labels-idx1-ubyte.gz", _header(2049, 0)),
    ),
    "the test split has no images",
  ),
  "train and test shapes differ": (
    lambda d: write_idx(
      d / "t10k-images-idx3-ubyte.gz", np.zeros((32, 32, 32), np.uint8), compress=True
    ),
    "expected one image shape",
  ),
  "unknown dtype code": (
    lambda d: _replace(d, "train-images-idx3-ubyte.gz", b"\0\0\x07\x03" + b"\0" * 12),
    "unknown dtype code",
  ),
  "float images": (
    lambda d: _replace(
      d, "train-images-idx3-ubyte.gz", b"\0\0\x0d\x03" + (1).to_bytes(4, "big") * 3 + b"\0" * 4
    ),
    "expected uint8 images",
  ),
  "an images file that is a directory": (
    lambda d: (
      (d / "train-images-idx3-ubyte.gz").unlink(),
      (d / "train-images-idx3-ubyte.gz").mkdir(),
    ),
    "missing train-images-idx3-ubyte",
  ),
  "conv on images it cannot halve twice": (
    lambda d: (
      write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((64, 30, 30), np.uint8), compress=True),
      write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((32, 30, 30), np.uint8), compress=True),
    ),
    "H and W divisible by 4",
  ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_is_one_line_before_the_workdir_exists(case, tmp_path, capsys):
  damage, message = DATA_CASES[case]
  data_dir = _dir(tmp_path)
  damage(data_dir)
  before = tree_bytes(tmp_path)
  extra = ["--config.model.name=conv", "--config.optim.batch_size=32"] if "conv" in case else []
  status, lines = run_main(capsys, train(tmp_path / "run", data_dir, *extra))
  assert status == 2 and len(lines) == 1 and lines[0].startswith("vae_jax: error:"), lines
  assert message in lines[0], lines[0]
  assert not (tmp_path / "run").exists() and tree_bytes(tmp_path) == before


# ---- config: flags and config files ----

CONFIG_CASES = {
  "unknown key": (["--config.model.nope=1"], "unknown config key 'nope'"),
  "unknown section": (["--config.training.lr=1"], "unknown config key"),
  "wrong type": (["--config.optim.batch_size=abc"], "batch_size"),
  "latent size 0": (["--config.model.latent_dim=0"], "config.model.latent_dim=0"),
  "negative learning rate": (
    ["--config.optim.learning_rate=-1"],
    "config.optim.learning_rate=-1.0",
  ),
  "nan learning rate": (["--config.optim.learning_rate=nan"], "config.optim.learning_rate=nan"),
  "seed 2**70": (["--config.seed=1180591620717411303424"], "seed"),
  "negative seed": (["--config.seed=-1"], "config.seed=-1"),
  "epochs overflow int32": (["--config.optim.num_epochs=4294967296"], "num_epochs"),
  "steps overflow int32": (
    ["--config.optim.num_epochs=2000000000"],
    "overflow the int32 step counter",
  ),
  "zero epochs": (["--config.optim.num_epochs=0"], "config.optim.num_epochs=0"),
  "batch larger than the data": (
    ["--config.optim.batch_size=100000"],
    "larger than the training set",
  ),
  "eval batch 0": (["--config.optim.eval_batch_size=0"], "config.optim.eval_batch_size=0"),
  "b1 of 1": (["--config.optim.b1=1.0"], "config.optim.b1=1.0"),
  "eps 0": (["--config.optim.eps=0.0"], "config.optim.eps=0.0"),
  "unknown model": (["--config.model.name=resnet"], "config.model.name='resnet'"),
  "unknown objective": (["--config.objective.name=gan"], "config.objective.name='gan'"),
  "setting of another objective": (
    ["--config.objective.name=iwae", "--config.objective.beta=2.0"],
    "does not apply to objective 'iwae'",
  ),
  "setting of another model": (["--config.model.channels=(8,8)"], "does not apply to model 'mlp'"),
  "unknown likelihood": (
    ["--config.objective.likelihood=poisson"],
    "config.objective.likelihood='poisson'",
  ),
  "mask everything": (
    ["--config.objective.corruption=mask", "--config.objective.corruption_level=1.0"],
    "corruption_level=1.0",
  ),
  "negative free bits": (["--config.objective.free_bits=-1.0"], "config.objective.free_bits=-1.0"),
  "iwae without samples": (
    ["--config.objective.name=iwae", "--config.objective.num_samples=0"],
    "config.objective.num_samples=0",
  ),
  "negative warm-up": (["--config.objective.kl_warmup_epochs=-1"], "kl_warmup_epochs=-1"),
  "warm-up overflows int32": (
    ["--config.objective.kl_warmup_epochs=1000000000"],
    "warm-up steps overflow the int32 step counter",
  ),
  "unknown strategy": (["--config.run.models_strategy=pmap"], "config.run.models_strategy='pmap'"),
  "float16": (["--config.model.compute_dtype=float16"], "config.model.compute_dtype='float16'"),
  "more devices than exist": (["--config.run.num_devices=99"], "config.run.num_devices=99"),
  "keep no checkpoint": (["--config.run.keep_checkpoints=0"], "config.run.keep_checkpoints=0"),
  "zero progress chunks": (["--config.run.progress_chunks=0"], "config.run.progress_chunks=0"),
  "unknown matmul precision": (
    ["--config.run.matmul_precision=fast"],
    "config.run.matmul_precision='fast'",
  ),
  "unknown cpu kernels": (["--config.run.cpu_kernels=mkl"], "config.run.cpu_kernels='mkl'"),
  "unknown source": (["--config.data.source=web"], "config.data.source='web'"),
  "negative example count": (["--config.data.train_examples=-1"], "config.data.train_examples=-1"),
  "a model that cannot fit in memory": (["--config.model.latent_dim=1000000000"], "GiB, more than"),
  "a hierarchical prior with the Gaussian-only beta-TCVAE": (
    ["--config.model.name=hvae2", "--config.objective.name=beta_tcvae"],
    "config.objective.name='beta_tcvae': reads the encoder's (mu, logvar) as q(z|x)",
  ),
  "a flow with free bits (per-unit Gaussian KL)": (
    ["--config.posterior.name=planar", "--config.objective.free_bits=0.5"],
    "config.objective.name='elbo' with these settings: reads the encoder's",
  ),
  "a sphere posterior with the normal prior": (
    ["--config.posterior.name=vmf"],
    "config.prior.name='normal': a prior on the euclidean for posterior 'vmf' on the sphere",
  ),
  "a prior for a model with latents of its own": (
    ["--config.model.name=hvae2", "--config.prior.name=mog"],
    "model 'hvae2' defines its own prior and posterior",
  ),
  "a VampPrior on real-valued data": (
    ["--config.prior.name=vamp", "--config.objective.likelihood=normal"],
    "config.prior.name='vamp': its inputs lie in [0, 1] (pixels); config.objective.likelihood",
  ),
  "a VampPrior without components": (
    ["--config.prior.name=vamp", "--config.prior.num_components=0"],
    "config.prior.num_components=0: expected an integer >= 1",
  ),
  "unknown learning-rate schedule": (
    ["--config.optim.lr_schedule=cosine"],
    "config.optim.lr_schedule='cosine'",
  ),
  "labels for a model that does not see them": (
    ["--config.objective.name=m2"],
    "uses labels, and model 'mlp' does not see them",
  ),
  "negative labels per class": (
    ["--config.data.labels_per_class=-1"],
    "config.data.labels_per_class=-1",
  ),
  "labels per class for an objective without unlabelled data": (
    ["--config.model.name=cmlp", "--config.data.labels_per_class=2"],
    "objective 'elbo' trains on every label or none",
  ),
  "more labels per class than a class has": (
    [
      "--config.model.name=cmlp",
      "--config.model.classifier_hidden=8",
      "--config.objective.name=m2",
      "--config.data.labels_per_class=500",
    ],
    "config.data.labels_per_class=500: class",
  ),
  "fewer classes than the labels": (
    ["--config.model.name=cmlp", "--config.model.num_classes=5"],
    "config.model.num_classes=5",
  ),
  "m2 without a classifier": (
    ["--config.model.name=cmlp", "--config.objective.name=m2"],
    "has no classifier q(y|x)",
  ),
  "the data's mean pixel as a location": (
    [
      "--config.objective.likelihood=discretized_logistic",
      "--config.model.output_bias=data_mean",
    ],
    "likelihood 'discretized_logistic' has none",
  ),
  "encoded data of a directory that is no run": (
    ["--config.data.source=encoded"],
    "data source 'encoded' needs a trained run there",
  ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_is_one_line_before_the_workdir_exists(case, session_idx_dir, tmp_path, capsys):
  args, message = CONFIG_CASES[case]
  status, lines = run_main(capsys, train(tmp_path / "run", session_idx_dir, *args))
  assert status == 2 and len(lines) == 1 and lines[0].startswith("vae_jax: error:"), lines
  assert message in lines[0], lines[0]
  assert not (tmp_path / "run").exists()


CONFIG_FILES = {
  "syntax error": ("def get_config(:\n", "cannot be loaded (SyntaxError"),
  "raises": (
    "def get_config():\n  raise RuntimeError('boom')\n",
    "cannot be loaded (RuntimeError: boom)",
  ),
  "no get_config": ("x = 1\n", "defines no get_config()"),
  **{
    f"returns {what}": (
      f"def get_config():\n  return {value}\n",
      f"get_config() returned a {kind}, expected an ml_collections.ConfigDict",
    )
    for what, value, kind in [
      ("a number", "3", "int"),
      ("nothing", "None", "NoneType"),
      ("a list", "[1, 2]", "list"),  # An override indexes it: was 'TypeError: list indices'.
      ("a string", "'abc'", "str"),
      ("a tuple", "(1, 2)", "tuple"),
    ]
  },
}


@pytest.mark.parametrize("case", [*CONFIG_FILES, "missing file"])
def test_bad_config_file_is_one_line(case, tmp_path, capsys):
  path = tmp_path / "config.py"
  if case in CONFIG_FILES:
    path.write_text(CONFIG_FILES[case][0])
  for overrides in ([], ["--config.optim.num_epochs=2"]):
    argv = ["train", f"--workdir={tmp_path / 'run'}", f"--config={path}", *overrides]
    status, lines = run_main(capsys, argv)
    assert status == 2 and len(lines) == 1, lines
    assert (CONFIG_FILES[case][1] if case in CONFIG_FILES else "not a file") in lines[0], lines
    assert f"--config {path}: " in lines[0], lines  # It names the file.
    assert not (tmp_path / "run").exists()


def test_a_recipe_argument_reaches_get_config_and_a_bad_one_is_one_line(tmp_path, capsys):
  recipe = Path(__file__).resolve().parents[1] / "vae_jax" / "configs" / "iwae_2layer.py"
  parsed = cli.parse(["train", f"--workdir={tmp_path / 'run'}", f"--config={recipe}:iwae,5,2"])
  config = parsed[2]
  assert (
    config.model.name,
    config.objective.name,
    config.objective.num_samples,
    config.optim.num_epochs,
  ) == ("hvae2", "iwae", 5, 4)
  status, lines = run_main(
    capsys, ["train", f"--workdir={tmp_path / 'run'}", f"--config={recipe}:gan,5"]
  )
  assert status == 2 and len(lines) == 1, lines
  assert (
    "cannot be loaded (ValueError: config argument 'gan,5': expected OBJECTIVE,K[,STAGES]"
    in lines[0]
  )
  assert not (tmp_path / "run").exists()


# ---- paths ----


def _locked_elsewhere(workdir):
  """Holds the workdir's lock through a second open file, as another process would."""
  return workdir_lib.locked(workdir)


PATH_CASES = {
  "workdir is a file": (lambda w: w.write_text("keep me"), "exists and is not a directory"),
  "name over the file system's limit": (None, "File name too long"),
  "its checkpoints is a file": (
    lambda w: (w.mkdir(), (w / "checkpoints").write_text("x")),
    "checkpoints is not a directory",
  ),
  "its metrics.jsonl is a directory": (
    lambda w: (w.mkdir(), (w / "metrics.jsonl").mkdir()),
    "metrics.jsonl is not a file",
  ),
  "a log without checkpoints": (
    lambda w: (w.mkdir(), (w / "metrics.jsonl").write_text('{"epoch": 1}\n')),
    "holds a run (metrics.jsonl) with no checkpoint",
  ),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_bad_workdir_is_one_line_and_changes_nothing(case, session_idx_dir, tmp_path, capsys):
  setup, message = PATH_CASES[case]
  workdir = tmp_path / ("x" * 300 if setup is None else "run")
  if setup is not None:
    setup(workdir)
  before = tree_bytes(tmp_path)
  status, lines = run_main(capsys, train(workdir, session_idx_dir))
  assert status == 2 and len(lines) == 1, lines
  assert message in lines[0], lines[0]
  assert tree_bytes(tmp_path) == before


def test_a_locked_workdir_is_refused_naming_the_holder(session_idx_dir, tmp_path, capsys):
  with workdir_lib.locked(tmp_path / "run"):
    status, lines = run_main(capsys, train(tmp_path / "run", session_idx_dir))
  assert status == 2 and len(lines) == 1 and f"(pid {os.getpid()})" in lines[0], lines
  assert list((tmp_path / "run").iterdir()) == []


def test_a_workdir_name_that_is_not_utf8_is_one_line(session_idx_dir, tmp_path, capsys):
  workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run-\xff")
  status, lines = run_main(capsys, train(workdir, session_idx_dir))
  assert status == 2 and len(lines) == 1 and "not valid UTF-8" in lines[0], lines
  assert os.listdir(tmp_path) == []


# ---- the commands that use a trained run ----

USE_CASES = {
  "no command": ([], "expected one command"),
  "unknown command": (["fit"], "expected one command"),
  "no workdir": (["sample", "--out=x.png"], "--workdir is required"),
  "sample without --out": (["sample", "--workdir=RUN"], "--out is required"),
  "sample to a directory": (["sample", "--workdir=RUN", "--out=TMP/dir.png"], "is a directory"),
  "sample to a jpg": (["sample", "--workdir=RUN", "--out=TMP/s.jpg"], "expected a .png file name"),
  "sample into a missing directory": (
    ["sample", "--workdir=RUN", "--out=TMP/no/s.png"],
    "does not exist",
  ),
  "sample none": (["sample", "--workdir=RUN", "--out=TMP/s.png", "--num=0"], "--num 0"),
  "sample more than memory holds": (
    ["sample", "--workdir=RUN", "--out=TMP/s.png", "--num=1000000000000"],
    "GiB, more than",
  ),
  "reconstruct none": (["reconstruct", "--workdir=RUN", "--out=TMP/r.png", "--num=0"], "--num 0"),
  "reconstruct more than the split": (
    ["reconstruct", "--workdir=RUN", "--out=TMP/r.png", "--num=101"],
    "expected 1 to 100",
  ),
  "encode to a png": (["encode", "--workdir=RUN", "--out=TMP/z.png"], "expected a .npz file name"),
  "an epoch never saved": (["evaluate", "--workdir=RUN", "--checkpoint=99"], "checkpoint '99'"),
  "a checkpoint name": (
    ["evaluate", "--workdir=RUN", "--checkpoint=newest"],
    "checkpoint 'newest'",
  ),
  "negative likelihood count": (["likelihood", "--workdir=RUN", "--num=-5"], "--num=-5"),
  "no importance samples": (["likelihood", "--workdir=RUN", "--num_samples=0"], "--num_samples=0"),
  "more importance samples than a key can index": (
    ["likelihood", "--workdir=RUN", "--num_samples=100000000000"],
    "expected >= 1 and < 2**31",
  ),
  "a workdir without checkpoints": (["evaluate", "--workdir=TMP"], "no checkpoint"),
  "a workdir that does not exist": (
    ["sample", "--workdir=TMP/none", "--out=TMP/s.png"],
    "not a directory",
  ),
  "an unknown split": (["encode", "--workdir=RUN", "--out=TMP/z.npz", "--split=valid"], "split"),
  "a label for an unconditional model": (
    ["sample", "--workdir=RUN", "--out=TMP/s.png", "--label=3"],
    "--label 3: model 'mlp' is not conditional",
  ),
  "a negative label": (["sample", "--workdir=RUN", "--out=TMP/s.png", "--label=-1"], "--label=-1"),
  "augment an unconditional model": (
    ["augment", "--workdir=RUN", "--out=TMP/gen"],
    "is not conditional, so its samples have no label",
  ),
  "augment into a missing directory": (
    ["augment", "--workdir=RUN", "--out=TMP/no/gen"],
    "/no does not exist",
  ),
  "augment without --out": (["augment", "--workdir=RUN"], "--out is required"),
}


@pytest.mark.parametrize("case", USE_CASES)
def test_bad_use_of_a_trained_run_is_one_line_and_changes_nothing(
  case, trained_run, tmp_path, capsys
):
  args, message = USE_CASES[case]
  (tmp_path / "dir.png").mkdir()
  before_run, before_tmp = tree_bytes(trained_run), tree_bytes(tmp_path)
  args = [a.replace("RUN", str(trained_run)).replace("TMP", str(tmp_path)) for a in args]
  status, lines = run_main(capsys, args)
  assert status == 2 and len(lines) == 1, lines
  assert message in lines[0], lines[0]
  assert tree_bytes(trained_run) == before_run and tree_bytes(tmp_path) == before_tmp
  assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png"]  # No temporary file left.


# ---- sweeps ----

STUDY = """
from vae_jax import sweep
def get_config():
  return sweep.make_study("s", "?", AXES, seeds=SEEDS, base={"optim.num_epochs": 1})
"""

SWEEP_CASES = {
  "axis not a list": ({"objective.beta": 0.5}, 1, "expected a non-empty list"),
  "axis values of mixed types": ({"objective.beta": [0.5, "high"]}, 1, "expected a float"),
  "unknown axis": ({"objective.dropout": [0.1]}, 1, "unknown axis or key 'objective.dropout'"),
  "no seeds": ({"objective.beta": [1.0]}, 0, "seeds=0"),
  "seed as an axis": ({"seed": [1, 2]}, 1, "'seed' is not an axis"),
  "a setting the objective does not use": (
    {"objective.name": ["ae"], "objective.beta": [2.0]},
    1,
    "does not apply to objective 'ae'",
  ),
}


@pytest.mark.parametrize("case", [*SWEEP_CASES, "workdir is a file", "a config without axes"])
def test_bad_study_is_one_line_before_anything_trains(case, tmp_path, capsys):
  study, workdir = tmp_path / "study.py", tmp_path / "sweep"
  if case in SWEEP_CASES:
    axes, seeds, message = SWEEP_CASES[case]
    study.write_text(STUDY.replace("AXES", repr(axes)).replace("SEEDS", str(seeds)))
  elif case == "workdir is a file":
    study.write_text(STUDY.replace("AXES", "{'objective.beta': [1.0]}").replace("SEEDS", "1"))
    workdir.write_text("keep me")
    message = "sweep workdir"
  else:
    study, message = cli.DEFAULT_CONFIG, "missing key 'name'"
  before = tree_bytes(tmp_path)
  status, lines = run_main(capsys, ["sweep", f"--config={study}", f"--workdir={workdir}"])
  assert status == 2 and len(lines) == 1, lines
  assert message in lines[0], lines[0]
  assert tree_bytes(tmp_path) == before
  assert case == "workdir is a file" or not workdir.exists()
