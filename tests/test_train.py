"""The compiled epoch, its keys and batches, evaluation and the run's outputs."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import losses, models, train

BATCH = 128


def _epoch_fn():
  return jax.jit(train.train_epoch, static_argnames=("batch_size", "on_step", "steps_per_report"))


def _setup(config, x_u8):
  rng_init, rng_shuffle, rng_noise = jax.random.split(jax.random.key(config.seed), 3)
  state = train.create_train_state(config, rng_init)
  return state, jnp.asarray(x_u8.reshape(len(x_u8), -1)), rng_shuffle, rng_noise


def test_split_batches_keeps_the_last_partial_batch():
  full, rest = train.split_batches(jnp.arange(300), BATCH)
  chex.assert_shape(full, (2, BATCH))
  chex.assert_shape(rest, (44,))
  np.testing.assert_array_equal(np.concatenate([full.ravel(), rest]), np.arange(300))
  full, rest = train.split_batches(jnp.arange(256), BATCH)
  assert full.shape == (2, BATCH) and rest.shape == (0,)


def test_epoch_sees_every_example_once_including_the_partial_batch(small_config, small_splits):
  state, x, rng_shuffle, rng_noise = _setup(small_config, small_splits["train"][0])
  state, sums = _epoch_fn()(state, x, 1, rng_shuffle, rng_noise, 1.0, batch_size=BATCH)
  assert int(state.step) == 3  # 128 + 128 + 44: the partial batch is a step of its own.
  assert int(sums["examples"]) == 300
  chex.assert_tree_all_finite(sums)


def test_scanned_epoch_equals_python_loop_of_train_steps(small_config, small_splits):
  state0, x, rng_shuffle, rng_noise = _setup(small_config, small_splits["train"][0])
  scanned, sums = _epoch_fn()(state0, x, 1, rng_shuffle, rng_noise, 1.0, batch_size=BATCH)

  # The same epoch written out by hand: permutation, three batches (the last of 44), steps.
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(rng_shuffle, 1), 300))
  step = jax.jit(train.train_step)
  state, total = state0, 0.0
  for idx in (perm[:128], perm[128:256], perm[256:]):
    state, metrics = step(state, x[idx], rng_noise, 1.0)
    total += float(metrics["loss"])
  assert int(state.step) == int(scanned.step) == 3
  chex.assert_trees_all_close(scanned.params, state.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(sums["loss"]), total, rtol=1e-5)


def test_same_config_and_seed_give_bit_identical_parameters(small_config, small_splits):
  def run(seed):
    small_config.seed = seed
    state, x, rng_shuffle, rng_noise = _setup(small_config, small_splits["train"][0])
    for epoch in (1, 2):
      state, _ = _epoch_fn()(state, x, epoch, rng_shuffle, rng_noise, 1.0, batch_size=BATCH)
    return jax.device_get(state.params)
  first, again, other = run(1), run(1), run(2)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.allclose(first["decoder"]["logits"]["kernel"], other["decoder"]["logits"]["kernel"])


def test_step_noise_comes_from_fold_in_of_the_step(small_config, small_splits):
  state, x, _, rng_noise = _setup(small_config, small_splits["train"][0])
  batch = x[:8]
  grads = lambda s, key: train.train_step(s, batch, key)[1]["loss"]
  # Same key and step: same noise, same loss. Another key or another step: other noise.
  assert float(grads(state, rng_noise)) == float(grads(state, rng_noise))
  assert float(grads(state, rng_noise)) != float(grads(state, jax.random.key(99)))
  assert float(grads(state, rng_noise)) != float(grads(state.replace(step=state.step + 1), rng_noise))


def test_evaluate_matches_an_independent_per_example_computation(small_config, small_splits):
  state, _, _, _ = _setup(small_config, small_splits["train"][0])
  x_u8 = small_splits["test"][0].reshape(100, -1)
  key = jax.random.key(5)
  sums = jax.jit(train.evaluate, static_argnames=("apply_fn", "batch_size"))(
      state.params, state.apply_fn, jnp.asarray(x_u8), key, batch_size=32)
  x = x_u8.astype(np.float32) / 255
  # z = mu over the whole set at once; sampled z batch by batch (32, 32, 32, 4) with fold_in(key, i).
  logits, mu, logvar = state.apply_fn({"params": state.params}, x, None)
  bce_mu = np.sum(losses.bce_per_example(logits, x))
  kl = np.sum(losses.kl_per_example(mu, logvar))
  bce = 0.0
  for i, start in enumerate(range(0, 100, 32)):
    logits_i, _, _ = state.apply_fn({"params": state.params}, x[start:start + 32],
                                    jax.random.fold_in(key, i))
    bce += float(np.sum(losses.bce_per_example(logits_i, x[start:start + 32])))
  np.testing.assert_allclose(sums["bce_mean_z"], bce_mu, rtol=1e-5)
  np.testing.assert_allclose(sums["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(sums["loss_mean_z"], bce_mu + kl, rtol=1e-5)
  np.testing.assert_allclose(sums["bce"], bce, rtol=1e-5)
  np.testing.assert_allclose(sums["loss"], bce + kl, rtol=1e-5)


def test_train_and_evaluate_writes_reference_outputs(small_config, small_splits, tmp_path, capsys):
  state, records = train.train_and_evaluate(small_config, tmp_path / "run", small_splits)
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert lines == records and [r["epoch"] for r in lines] == [1, 2]
  for key in ("train_loss", "test_loss", "test_bce", "test_kl", "train_seconds", "compile_seconds"):
    assert all(np.isfinite(r[key]) for r in lines), key
  assert lines[0]["compile_seconds"] > 0 and lines[1]["compile_seconds"] == 0
  assert lines[1]["steps"] == int(state.step) == 6
  np.testing.assert_allclose(lines[1]["test_loss"], lines[1]["test_bce"] + lines[1]["test_kl"], rtol=1e-5)
  assert json.loads((tmp_path / "run" / "config.json").read_text())["latent_dim"] == 20
  for epoch in (1, 2):
    from PIL import Image
    assert Image.open(tmp_path / "run" / f"reconstruction_{epoch}.png").size == (242, 62)
    assert Image.open(tmp_path / "run" / f"sample_{epoch}.png").size == (242, 242)
  out = capsys.readouterr().out
  assert f"====> Epoch: 2 Average loss: {lines[1]['train_loss']:.4f}" in out
  assert f"====> Test set loss: {lines[1]['test_loss']:.4f}" in out


def test_workdir_with_an_earlier_run_is_refused_untouched(small_config, small_splits, tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
  with pytest.raises(train.WorkdirError, match="holds a run \\(metrics.jsonl\\) with no checkpoint"):
    train.train_and_evaluate(small_config, tmp_path, small_splits)
  assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("key,value,message", [
    ("latent_dim", 0, "config.latent_dim=0: expected an integer >= 1"),
    ("learning_rate", -1.0, "config.learning_rate=-1.0"),
    ("init", "he", "config.init='he': expected one of torch, flax"),
    ("data_source", "web", "config.data_source='web'"),
])
def test_invalid_config_values_are_refused(small_config, key, value, message):
  small_config[key] = value
  with pytest.raises(train.ConfigError, match=message):
    train.validate_config(small_config)


def test_batch_larger_than_the_data_is_refused_before_writing(small_config, idx_dir, tmp_path):
  small_config.data_source, small_config.data_dir, small_config.batch_size = "idx", str(idx_dir), 301
  with pytest.raises(train.ConfigError, match="batch_size=301: larger than the training set \\(300"):
    train.train_and_evaluate(small_config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def read_events(directory):
  """(tag, step, value or image bytes) of every summary in a TFRecord event file, parsed by hand."""
  import struct

  from tensorboardX.proto import event_pb2
  (path,) = directory.glob("events.out.tfevents.*")
  data, out, pos = path.read_bytes(), [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4  # length, its crc, the record, its crc
    for v in event.summary.value:
      out.append((v.tag, event.step, v.image.encoded_image_string if v.HasField("image") else v.simple_value))
  return out


def test_tensorboard_gets_scalars_and_grids_per_epoch(small_config, small_splits, tmp_path):
  pytest.importorskip("tensorboardX")
  _, records = train.train_and_evaluate(small_config, tmp_path / "run", small_splits)
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
    np.testing.assert_array_equal(logged, np.asarray(Image.open(tmp_path / "run" / f"{name}_2.png")))
