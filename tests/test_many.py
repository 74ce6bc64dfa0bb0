"""K vmapped models against the same configs trained alone; per-model hyper-parameters."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import checkpoint, losses, many, train
from vae_jax.configs import default

# 300 examples in batches of 32: 9 full batches and one of 12, 10 steps an epoch.
HPARAMS = {"seed": [1, 2, 3], "beta": [1.0, 0.5, 2.0], "learning_rate": [1e-3, 2e-3, 5e-4],
           "kl_warmup_epochs": [0, 0, 1], "binarize": [False, True, False]}


def small_config(**values):
  config = default.get_config()
  config.update({"batch_size": 32, "num_epochs": 2, "progress": False, "save_images": False,
                 **values})
  return config


@pytest.fixture(scope="module")
def vmapped(small_splits):
  return many.train_many(small_config(), HPARAMS, small_splits)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_model_k_matches_the_same_config_trained_alone(vmapped, small_splits, k):
  states, records = vmapped
  values = {name: HPARAMS[name][k] for name in HPARAMS}
  alone, alone_records = train.train_and_evaluate(small_config(**values),
                                                  tempfile.mkdtemp() + "/run", small_splits)
  model_k = many.unstack(states, k)
  assert int(model_k.step) == int(alone.step) == 20
  for r, a in zip(records[k], alone_records, strict=True):
    np.testing.assert_allclose(r["train_loss"], a["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(r["test_loss"], a["test_loss"], rtol=1e-4)
  if values["kl_warmup_epochs"]:
    # With the KL weight near 0 for the first steps, nothing holds the posterior variances
    # and training is sensitive: vmapped and single-model matmuls differ in their last bits
    # (8e-6 after one step here) and those grow. The losses above agree; the weights drift.
    return
  # rtol 1e-4; atol 1e-5 (1 % of an Adam step) where a gradient near zero lets Adam's
  # m / sqrt(v) turn a last-bit difference into part of a step.
  for x, y in zip(jax.tree.leaves(model_k.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_models_really_have_their_own_hyper_parameters(small_splits):
  _, records = many.train_many(small_config(num_epochs=1), {"seed": [5, 5], "beta": [0.0, 4.0]},
                               small_splits)
  kl_free, kl_heavy = records[0][-1]["test_kl"], records[1][-1]["test_kl"]
  assert kl_free > 3 * kl_heavy  # beta = 0 leaves the posterior free; beta = 4 pulls it in.
  states, _ = many.train_many(small_config(num_epochs=1), {"learning_rate": [1e-3, 1e-2]},
                              small_splits)
  np.testing.assert_allclose(states.opt_state.hyperparams["learning_rate"], [1e-3, 1e-2])


def test_kl_warmup_scales_the_kl_by_step_over_warmup(small_config_state):
  state, x_u8, rng_noise = small_config_state
  state = state.replace(step=jnp.int32(4))  # Step 4 of a 10-step warm-up: weight 5 / 10.
  _, metrics = train.train_step(state, x_u8, rng_noise, 2.0, kl_warmup_steps=10)
  key = jax.random.fold_in(rng_noise, 4)
  logits, mu, logvar = state.apply_fn({"params": state.params}, train.to_float(x_u8), key)
  bce = losses.bce_per_example(logits, train.to_float(x_u8)).sum()
  kl = losses.kl_per_example(mu, logvar).sum()
  np.testing.assert_allclose(metrics["loss"], bce + 2.0 * 0.5 * kl, rtol=1e-5)


def test_binarize_trains_on_a_bernoulli_draw_of_the_pixels(small_config_state):
  state, x_u8, rng_noise = small_config_state
  _, metrics = train.train_step(state, x_u8, rng_noise, 1.0, binarize=True)
  key = jax.random.fold_in(rng_noise, 0)
  x_bin = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), train.to_float(x_u8)), np.float32)
  assert set(np.unique(x_bin)) == {0.0, 1.0}
  logits, _, _ = state.apply_fn({"params": state.params}, jnp.asarray(x_bin), key)
  p = jax.nn.sigmoid(np.asarray(logits, np.float64))
  bce = -(x_bin * np.log(p) + (1 - x_bin) * np.log1p(-p)).sum()
  np.testing.assert_allclose(metrics["bce"], bce, rtol=1e-4)


@pytest.fixture()
def small_config_state(small_splits):
  config = small_config()
  state = train.create_train_state(config, jax.random.key(0))
  return state, jnp.asarray(small_splits["train"][0][:16].reshape(16, -1)), jax.random.key(1)


@pytest.mark.parametrize("hparams,message", [
    ({"seed": [1, 2], "dropout": [0.1, 0.2]}, "unknown per-model hyper-parameter\\(s\\) dropout"),
    ({"seed": [1, 2], "beta": [1.0]}, "differ in length"),
])
def test_bad_hyper_parameters_are_refused(hparams, message):
  with pytest.raises(many.HparamError, match=message):
    many.check_hparams(hparams)


def test_a_killed_k_model_run_resumes_to_the_same_numbers(small_splits, tmp_path):
  config = small_config()
  hparams = {"seed": [1, 2], "beta": [1.0, 0.5]}
  whole, whole_records = many.train_many(config, hparams, small_splits, num_epochs=2)
  many.train_many(config, hparams, small_splits, num_epochs=1, workdir=tmp_path)  # "Killed" after 1.
  resumed, records = many.train_many(config, hparams, small_splits, num_epochs=2, workdir=tmp_path)
  for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  strip = lambda rs: [[{k: v for k, v in r.items() if k != "train_seconds"} for r in m] for m in rs]
  assert strip(records) == strip(whole_records)
  with pytest.raises(checkpoint.CheckpointError, match="beta"):
    many.train_many(config, {"seed": [1, 2], "beta": [1.0, 2.0]}, small_splits, num_epochs=3,
                    workdir=tmp_path)
