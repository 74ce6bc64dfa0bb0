"""Augmentation: the classical transforms against numpy's, the IDX writer against the reader,
``augment`` writing a conditional model's labelled samples, and the classifiers learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_split

import vae_jax
from vae_jax import __main__ as cli, augmentation, classifier, data


def test_move_is_numpys_shift_and_rot90_at_whole_pixels_and_right_angles():
  x_BxHxWxC = jnp.asarray(np.random.RandomState(0).rand(3, 6, 6, 2), jnp.float32)
  same = augmentation.move(x_BxHxWxC, jnp.zeros((3, 2)), jnp.zeros(3))
  np.testing.assert_allclose(same, x_BxHxWxC, atol=1e-6)
  shifted = np.asarray(augmentation.move(x_BxHxWxC, jnp.array([[1.0, -2.0]] * 3), jnp.zeros(3)))
  want = np.zeros_like(shifted)
  want[:, 1:, :4] = np.asarray(x_BxHxWxC)[:, :5, 2:]  # Down one row, left two columns; zeros in.
  np.testing.assert_allclose(shifted, want, atol=1e-6)
  turned = augmentation.move(x_BxHxWxC, jnp.zeros((3, 2)), jnp.full(3, 90.0))
  np.testing.assert_allclose(turned, np.rot90(x_BxHxWxC, axes=(1, 2)), atol=1e-5)
  moved = augmentation.shift_rotate(x_BxHxWxC, jax.random.key(0), 2.0, 15.0)
  assert moved.shape == x_BxHxWxC.shape and not np.allclose(moved, x_BxHxWxC)


@pytest.mark.parametrize("shape", [(7,), (4, 5, 3), (2, 5, 3, 3)])
def test_idx_bytes_read_back_as_the_same_array(shape):
  array = np.random.RandomState(1).randint(0, 256, shape).astype(np.uint8)
  np.testing.assert_array_equal(data.parse_idx(data.idx_bytes(array), "x"), array)


def test_augment_writes_a_conditional_models_labelled_samples_as_idx(
  small_splits, tmp_path, capsys
):
  config = vae_jax.get_config(model="cmlp")
  config.model.latent_dim = 3
  config.optim.num_epochs = 1
  config.run.update(progress=False, save_images=False, tensorboard=False)
  run = tmp_path / "run"
  state, _ = vae_jax.train(config, run, small_splits)
  assert cli.main(["augment", f"--workdir={run}", f"--out={tmp_path / 'gen'}", "--num=4"]) == 0
  images, labels = data.read_idx_pair(*data.idx_paths(tmp_path / "gen", "train"))
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 4))
  want = augmentation.to_uint8(vae_jax.sample(state, 40, jax.random.key(0), labels))
  np.testing.assert_array_equal(images, want)
  before = (tmp_path / "gen" / augmentation.FILES[0]).read_bytes()
  assert cli.main(["augment", f"--workdir={run}", f"--out={tmp_path / 'gen'}", "--num=2"]) == 2
  assert "already holds" in capsys.readouterr().err
  assert (tmp_path / "gen" / augmentation.FILES[0]).read_bytes() == before


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_the_classifiers_learn_classes_a_bright_quadrant_tells_apart(network):
  x_u8, _ = synthetic_split(400, 0, shape=(12, 12, 1))
  y = np.arange(400) % 4
  x = x_u8 / np.float32(512)
  for k, (r, c) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):
    x[y == k, r : r + 6, c : c + 6] += 0.5
  recipe = classifier.Recipe(network=network, steps=150)
  params = classifier.train(
    jax.random.split(jax.random.key(0), 2), x[:300], y[:300], recipe, num_classes=4
  )
  assert (classifier.accuracy(params, network, x[300:], y[300:], num_classes=4) > 0.9).all()


def test_m1m2_generates_through_m1s_decoder_with_the_inactive_units_at_zero():
  def state(model: str, shape, latent: int, likelihood: str = "bernoulli"):
    config = vae_jax.get_config(model=model)
    config.model.update(hidden_dim=8, latent_dim=latent)
    config.objective.likelihood = likelihood
    return vae_jax.create_state(config, shape, num_train_examples=16)[0]

  m1 = state("mlp", (4, 4, 1), 5)
  active_L = np.array([True, False, True, True, False])
  m2 = state("cmlp", (1, 3, 1), 2, "normal")  # M2 on M1's 3 active units.
  x_u8, labels = augmentation.generate_m1m2(m2, m1, active_L, 2, jax.random.key(7))
  assert x_u8.shape == (20, 4, 4, 1) and x_u8.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 2))
  # By hand: z2 as sample draws it, p(z1|y, z2)'s mean from M2's decoder, M1's sigmoid mean.
  z2 = jax.random.normal(jax.random.key(7), (20, 2))
  mean_z1 = m2.apply_fn({"params": m2.params}, z2, jnp.asarray(labels), method="generate")
  z1 = np.zeros((20, 5), np.float32)
  z1[:, active_L] = np.asarray(mean_z1).reshape(20, 3)
  want = m1.apply_fn({"params": m1.params}, jnp.asarray(z1), method="generate")
  np.testing.assert_array_equal(x_u8, augmentation.to_uint8(want))
