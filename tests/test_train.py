"""The compiled epoch, its keys and batches, evaluation and the run's outputs."""

import functools
import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import group as group_lib, losses, objectives, step, training, workdir
from vae_jax.epoch import Programs
from vae_jax.registry import ConfigError

BATCH = 128


def _programs(config, splits, chunks=1):
  """(programs, states, keys) of one model: the single run's compiled epoch."""
  group = group_lib.make_group(config, splits)
  states, keys = group_lib.create_states(group)
  x_train, x_test = jax.device_put((splits["train"][0], splits["test"][0]))
  return Programs(group, states, keys, x_train, x_test, chunks=chunks), states, keys


def _step_fn(config):
  return functools.partial(step.train_step, objective_fn=objectives.REGISTRY.get("elbo").target.fn)


def _hparams():
  return objectives.make_hparams(
    (objectives.REGISTRY.get("elbo"), dict(objectives.REGISTRY.get("elbo").settings))
  )


def test_split_batches_keeps_the_last_partial_batch():
  full, rest = step.split_batches(jnp.arange(300), BATCH)
  chex.assert_shape(full, (2, BATCH))
  chex.assert_shape(rest, (44,))
  np.testing.assert_array_equal(np.concatenate([full.ravel(), rest]), np.arange(300))
  full, rest = step.split_batches(jnp.arange(256), BATCH)
  assert full.shape == (2, BATCH) and rest.shape == (0,)


def test_epoch_sees_every_example_once_including_the_partial_batch(small_config, small_splits):
  programs, states, keys = _programs(small_config, small_splits)
  states, sums = programs.train_epoch(states, keys, 1)
  assert int(states.step[0]) == 3  # 128 + 128 + 44: the partial batch is a step of its own.
  assert int(sums["examples"][0]) == 300
  chex.assert_tree_all_finite(sums)


def test_scanned_epoch_equals_python_loop_of_train_steps(small_config, small_splits):
  programs, states, keys = _programs(small_config, small_splits)
  state, keys0 = group_lib.unstack(states), group_lib.unstack(keys)
  one_step = jax.jit(_step_fn(small_config))
  x = jnp.asarray(small_splits["train"][0])
  scanned = states
  for epoch in (1, 2):  # Epoch 2 too: each epoch shuffles with its own fold_in(shuffle, epoch).
    scanned, sums = programs.train_epoch(scanned, keys, epoch)
    # The same epoch written out by hand: permutation, three batches (the last of 44), steps.
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(keys0["shuffle"], epoch), 300))
    total = 0.0
    for idx in (perm[:128], perm[128:256], perm[256:]):
      state, metrics = one_step(state, x[idx], keys0["noise"], _hparams())
      total += float(metrics["loss"])
    assert int(state.step) == int(scanned.step[0]) == 3 * epoch
    chex.assert_trees_all_close(
      group_lib.unstack(scanned.params), state.params, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(float(sums["loss"][0]), total, rtol=1e-5)


def test_an_epoch_in_chunks_is_bit_identical_to_one_program(small_config, small_splits):
  small_config.optim.batch_size = 32  # 9 full batches in chunks of 3, then one batch of 12.
  results = []
  for chunks in (1, 3):
    programs, states, keys = _programs(small_config, small_splits, chunks)
    seen = []
    for epoch in (1, 2):
      states, sums = programs.train_epoch(states, keys, epoch, seen.append)
    results.append((jax.device_get(states.params), jax.device_get(sums)))
  assert seen == [3, 6, 13, 16]  # Chunks 1 and 2 of each epoch, read while the next ran.
  jax.tree.map(np.testing.assert_array_equal, results[0], results[1])


def test_same_config_and_seed_give_bit_identical_parameters(small_config, small_splits):
  def run(seed):
    small_config.seed = seed
    programs, states, keys = _programs(small_config, small_splits)
    for epoch in (1, 2):
      states, _ = programs.train_epoch(states, keys, epoch)
    return jax.device_get(states.params)

  first, again, other = run(1), run(1), run(2)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.allclose(first["decoder"]["logits"]["kernel"], other["decoder"]["logits"]["kernel"])


def test_step_noise_comes_from_fold_in_of_the_step(small_config, small_splits):
  _, states, keys = _programs(small_config, small_splits)
  state, rng_noise = group_lib.unstack(states), group_lib.unstack(keys)["noise"]
  batch = jnp.asarray(small_splits["train"][0][:8])
  loss = lambda s, key: _step_fn(small_config)(s, batch, key, _hparams())[1]["loss"]
  # Same key and step: same noise, same loss. Another key or another step: other noise.
  assert float(loss(state, rng_noise)) == float(loss(state, rng_noise))
  assert float(loss(state, rng_noise)) != float(loss(state, jax.random.key(99)))
  assert float(loss(state, rng_noise)) != float(loss(state.replace(step=state.step + 1), rng_noise))


def test_evaluate_matches_an_independent_per_example_computation(small_config, small_splits):
  _, states, _ = _programs(small_config, small_splits)
  state = group_lib.unstack(states)
  x_u8 = small_splits["test"][0]
  key = jax.random.key(5)
  sums = jax.jit(step.evaluate, static_argnames=("apply_fn", "batch_size", "objective_fn"))(
    state.params,
    state.apply_fn,
    jnp.asarray(x_u8),
    key,
    batch_size=32,
    objective_fn=objectives.REGISTRY.get("elbo").target.fn,
    hparams=_hparams().for_evaluation(),
  )
  assert set(sums) == {"loss", "bce", "kl", "loss_mean_z", "bce_mean_z"}
  x = x_u8.astype(np.float32) / 255
  # z = mu over the whole set at once; sampled z batch by batch (32, 32, 32, 4) with fold_in(key, i).
  logits, mu, logvar = state.apply_fn({"params": state.params}, x, None)
  bce_mu = np.sum(losses.bce_per_example(logits, x))
  kl = np.sum(losses.kl_per_example(mu, logvar))
  bce = 0.0
  for i, start in enumerate(range(0, 100, 32)):
    logits_i, _, _ = state.apply_fn(
      {"params": state.params}, x[start : start + 32], jax.random.fold_in(key, i)
    )
    bce += float(np.sum(losses.bce_per_example(logits_i, x[start : start + 32])))
  np.testing.assert_allclose(sums["bce_mean_z"], bce_mu, rtol=1e-5)
  np.testing.assert_allclose(sums["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(sums["loss_mean_z"], bce_mu + kl, rtol=1e-5)
  np.testing.assert_allclose(sums["bce"], bce, rtol=1e-5)
  np.testing.assert_allclose(sums["loss"], bce + kl, rtol=1e-5)


def test_train_and_evaluate_writes_reference_outputs(small_config, small_splits, tmp_path, capsys):
  state, records = training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert lines == records and [r["epoch"] for r in lines] == [1, 2]
  for key in ("train_loss", "test_loss", "test_bce", "test_kl", "train_seconds", "compile_seconds"):
    assert all(np.isfinite(r[key]) for r in lines), key
  assert lines[0]["compile_seconds"] > 0 and lines[1]["compile_seconds"] == 0
  assert lines[1]["steps"] == int(state.step) == 6
  np.testing.assert_allclose(
    lines[1]["test_loss"], lines[1]["test_bce"] + lines[1]["test_kl"], rtol=1e-5
  )
  assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["latent_dim"] == 20
  assert list(lines[0])[:9] == [
    "epoch",
    "train_loss",
    "train_bce",
    "train_kl",
    "test_loss",
    "test_bce",
    "test_kl",
    "test_loss_mean_z",
    "test_bce_mean_z",
  ]
  for epoch in (1, 2):
    from PIL import Image

    assert Image.open(tmp_path / "run" / f"reconstruction_{epoch}.png").size == (242, 62)
    assert Image.open(tmp_path / "run" / f"sample_{epoch}.png").size == (242, 242)
  out = capsys.readouterr().out
  assert f"====> Epoch: 2 Average loss: {lines[1]['train_loss']:.4f}" in out
  assert f"====> Test set loss: {lines[1]['test_loss']:.4f}" in out


def test_workdir_with_an_earlier_run_is_refused_untouched(small_config, small_splits, tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
  with pytest.raises(
    workdir.WorkdirError, match="holds a run \\(metrics.jsonl\\) with no checkpoint"
  ):
    training.train_and_evaluate(small_config, tmp_path, small_splits)
  assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.latent_dim", 0, "config.model.latent_dim=0: expected an integer >= 1"),
    ("optim.learning_rate", -1.0, "config.optim.learning_rate=-1.0"),
    ("optim.b2", 1.0, "config.optim.b2=1.0: expected a value in \\[0, 1\\)"),
    ("model.init_scheme", "he", "config.model.init_scheme='he': expected one of torch, flax"),
    ("data.source", "web", "config.data.source='web'"),
    ("objective.beta", -1.0, "config.objective.beta=-1.0: expected a finite value >= 0"),
    (
      "objective.tc_weight",
      2.0,
      "config.objective.tc_weight=2.0: does not apply to objective 'elbo'",
    ),
    ("run.models_strategy", "pmap", "config.run.models_strategy='pmap'"),
  ],
)
def test_invalid_config_values_are_refused_before_writing(
  small_config, small_splits, tmp_path, key, value, message
):
  section, name = key.split(".")
  small_config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_data_is_refused_before_writing(small_config, idx_dir, tmp_path):
  small_config.data.source, small_config.data.dir, small_config.optim.batch_size = (
    "idx",
    str(idx_dir),
    301,
  )
  with pytest.raises(ConfigError, match="batch_size=301: larger than the training set \\(300"):
    training.train_and_evaluate(small_config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def read_events(directory):
  """(tag, step, value or image bytes) of every summary in a TFRecord event file, parsed by hand."""
  import struct

  from tensorboardX.proto import event_pb2

  (path,) = directory.glob("events.out.tfevents.*")
  data, out, pos = path.read_bytes(), [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos : pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
    pos += 12 + length + 4  # length, its crc, the record, its crc
    for v in event.summary.value:
      out.append(
        (v.tag, event.step, v.image.encoded_image_string if v.HasField("image") else v.simple_value)
      )
  return out


def test_tensorboard_gets_scalars_and_grids_per_epoch(small_config, small_splits, tmp_path):
  pytest.importorskip("tensorboardX")
  _, records = training.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  events = read_events(tmp_path / "run" / "tensorboard")
  scalars = {(tag, step): value for tag, step, value in events if not isinstance(value, bytes)}
  for r in records:
    np.testing.assert_allclose(scalars[("test_loss", r["epoch"])], r["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(scalars[("train_kl", r["epoch"])], r["train_kl"], rtol=1e-6)
  images = {(tag, step): png for tag, step, png in events if isinstance(png, bytes)}
  import io

  from PIL import Image

  for name in ("sample", "reconstruction"):
    logged = np.asarray(Image.open(io.BytesIO(images[(name, 2)])).convert("L"))
    np.testing.assert_array_equal(
      logged, np.asarray(Image.open(tmp_path / "run" / f"{name}_2.png"))
    )


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when installed (about 2 s of every run's start-up) though
  we write numpy arrays: the writer loads without it, and torch still imports afterwards."""
  pytest.importorskip("tensorboardX")
  code = (
    "import sys; from vae_jax import summaries\n"
    f"w = summaries.open_writer({str(tmp_path)!r}); w.add_scalar('x', 1.0, 1); w.close()\n"
    "print('torch' in sys.modules)\n"
    "import importlib.util; print(importlib.util.find_spec('torch') is None or bool(__import__('torch')))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "True"], out.stderr
  assert list(tmp_path.glob("events.out.tfevents.*"))
