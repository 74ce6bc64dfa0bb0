"""K models in one program against the same configs trained alone; per-model settings."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_model

from vae_jax import checkpoint, config as config_lib, group, losses, step, training
from vae_jax.registry import ConfigError

# 300 examples in batches of 32: 9 full batches and one of 12, 10 steps an epoch.
OVERRIDES = [
  {"seed": 1, "objective.beta": 1.0, "optim.learning_rate": 1e-3},
  {"seed": 2, "objective.beta": 0.5, "optim.learning_rate": 2e-3},
  {"seed": 3, "objective.beta": 2.0, "optim.learning_rate": 5e-4, "objective.kl_warmup_epochs": 1},
]


def small_config(**values):
  return config_lib.from_flat(
    {
      "optim.batch_size": 32,
      "optim.num_epochs": 2,
      "run.progress": False,
      "run.save_images": False,
      "run.tensorboard": False,
      **values,
    }
  )


def train_k(config, overrides, splits, ckpt_dir=None):
  ckpt_dir = ckpt_dir or tempfile.mkdtemp()
  return training.train_models(
    config, splits, overrides, ckpt_dir, [None] * len(overrides), log=lambda _: None
  )


@pytest.fixture(scope="module", params=["loop", "map", "vmap"])
def k_models(request, small_splits):
  return request.param, train_k(
    small_config(**{"run.models_strategy": request.param}), OVERRIDES, small_splits
  )


@pytest.mark.parametrize("k", [0, 1, 2])
def test_model_k_matches_the_same_config_trained_alone(k_models, small_splits, k):
  strategy, (states, records) = k_models
  alone, alone_records = training.train_and_evaluate(
    small_config(**OVERRIDES[k]), tempfile.mkdtemp() + "/run", small_splits
  )
  model_k = group.unstack(states, k)
  assert int(model_k.step) == int(alone.step) == 20
  for r, a in zip(records[k], alone_records, strict=True):
    np.testing.assert_allclose(r["train_loss"], a["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(r["test_loss"], a["test_loss"], rtol=1e-4)
  if strategy == "loop":  # The single-model program for each model: K single runs, exactly.
    timing = ("train_seconds", "compile_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in records[k]] == [
      {k: v for k, v in r.items() if k not in timing} for r in alone_records
    ]
    jax.tree.map(
      np.testing.assert_array_equal, jax.device_get(model_k.params), jax.device_get(alone.params)
    )
    return
  if "objective.kl_warmup_epochs" in OVERRIDES[k]:
    # With the KL weight near 0 for the first steps, nothing holds the posterior variances
    # and training is sensitive: batched and single-model matmuls differ in their last bits
    # and those grow. The losses above agree; the weights drift.
    return
  # rtol 1e-4; atol 1e-5 (1 % of an Adam step) where a gradient near zero lets Adam's
  # m / sqrt(v) turn a last-bit difference into part of a step.
  for x, y in zip(jax.tree.leaves(model_k.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_models_really_have_their_own_settings(small_splits):
  config = small_config(**{"optim.num_epochs": 1})
  _, records = train_k(
    config, [{"seed": 5, "objective.beta": 0.0}, {"seed": 5, "objective.beta": 4.0}], small_splits
  )
  kl_free, kl_heavy = records[0][-1]["test_kl"], records[1][-1]["test_kl"]
  assert kl_free > 3 * kl_heavy  # beta = 0 leaves the posterior free; beta = 4 pulls it in.
  states, _ = train_k(
    config, [{"optim.learning_rate": 1e-3}, {"optim.learning_rate": 1e-2}], small_splits
  )
  np.testing.assert_allclose(states.opt_state.hyperparams["learning_rate"], [1e-3, 1e-2])


def test_kl_warmup_scales_the_kl_by_step_over_warmup(small_splits):
  state, keys, fn, hparams = make_model(
    {"objective.beta": 2.0, "objective.kl_warmup_epochs": 1, "optim.batch_size": 30}
  )  # 10 steps an epoch.
  x_u8 = jnp.asarray(small_splits["train"][0][:16])
  state = state.replace(step=jnp.int32(4))  # Step 4 of a 10-step warm-up: weight 5 / 10.
  _, metrics = step.train_step(state, x_u8, keys["noise"], hparams, objective_fn=fn)
  key = jax.random.fold_in(keys["noise"], 4)
  logits, mu, logvar = state.apply_fn({"params": state.params}, step.to_float(x_u8), key)
  bce = losses.bce_per_example(logits, step.to_float(x_u8)).sum()
  kl = losses.kl_per_example(mu, logvar).sum()
  np.testing.assert_allclose(metrics["loss"], bce + 2.0 * 0.5 * kl, rtol=1e-5)


def test_binarize_trains_on_a_bernoulli_draw_of_the_pixels(small_splits):
  state, keys, fn, hparams = make_model()
  x_u8 = jnp.asarray(small_splits["train"][0][:16])
  _, metrics = step.train_step(state, x_u8, keys["noise"], hparams, objective_fn=fn, binarize=True)
  key = jax.random.fold_in(keys["noise"], 0)  # The objective's; the data's draws another stream.
  draws = step.data_key(keys["noise"], 0)
  x_bin = np.asarray(
    jax.random.bernoulli(jax.random.fold_in(draws, 1), step.to_float(x_u8)), np.float32
  )
  assert set(np.unique(x_bin)) == {0.0, 1.0}
  # An objective deriving fold_in(key, 1) from its key draws something else than the data's.
  own = jax.random.bernoulli(jax.random.fold_in(key, 1), step.to_float(x_u8))
  assert (np.asarray(own, np.float32) != x_bin).any()
  logits, _, _ = state.apply_fn({"params": state.params}, jnp.asarray(x_bin), key)
  p = jax.nn.sigmoid(np.asarray(logits, np.float64))
  bce = -(x_bin * np.log(p) + (1 - x_bin) * np.log1p(-p)).sum()
  np.testing.assert_allclose(metrics["bce"], bce, rtol=1e-4)


@pytest.mark.parametrize(
  "overrides,message",
  [
    ([{"seed": 1, "model.latent_dim": 5}], "per-model setting 'model.latent_dim'"),
    ([{"objective.likelihood": "gaussian"}], "per-model setting 'objective.likelihood'"),
  ],
)
def test_settings_that_shape_the_program_cannot_differ_within_a_group(
  small_splits, overrides, message
):
  with pytest.raises(ConfigError, match=message):
    group.make_group(small_config(), small_splits, overrides)


def test_batched_settings_derive_from_the_objective():
  from vae_jax import objectives

  tc = objectives.REGISTRY.get("beta_tcvae").target
  assert group.batched_settings(tc) == (
    "seed",
    "optim.learning_rate",
    "objective.mi_weight",
    "objective.tc_weight",
    "objective.dw_weight",
  )


def test_a_killed_k_model_run_resumes_to_the_same_numbers(small_splits, tmp_path):
  overrides = [{"seed": 1, "objective.beta": 1.0}, {"seed": 2, "objective.beta": 0.5}]
  whole, whole_records = train_k(small_config(), overrides, small_splits)
  train_k(
    small_config(**{"optim.num_epochs": 1}), overrides, small_splits, tmp_path
  )  # "Killed" after 1.
  resumed, records = train_k(small_config(), overrides, small_splits, tmp_path)
  for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  strip = lambda rs: [
    [{k: v for k, v in r.items() if k not in ("train_seconds", "compile_seconds")} for r in m]
    for m in rs
  ]
  assert strip(records) == strip(whole_records)
  with pytest.raises(checkpoint.CheckpointError, match="beta"):
    train_k(
      small_config(**{"optim.num_epochs": 3}),
      [{"seed": 1, "objective.beta": 1.0}, {"seed": 2, "objective.beta": 2.0}],
      small_splits,
      tmp_path,
    )


def test_a_non_finite_model_stops_the_group_naming_its_setting(small_splits, tmp_path):
  with pytest.raises(
    FloatingPointError, match="model 1 \\(seed=2, optim.learning_rate=1e\\+30\\), epoch 1"
  ):
    train_k(
      small_config(),
      [{"seed": 1}, {"seed": 2, "optim.learning_rate": 1e30}],
      small_splits,
      tmp_path,
    )
  assert not checkpoint.has_checkpoints(tmp_path)
