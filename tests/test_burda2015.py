"""The IWAE paper's pieces (Burda et al., 2015): its two networks' importance weights, the
k-sample objectives, the staged learning rate and the output-bias init, against independent
float64 numpy computations; the estimator's bound on a trained model; the table's script."""

import argparse
import json
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_model, synthetic_split
from scipy import special, stats

from vae_jax import config as config_lib, evaluate, group as group_lib, training
from vae_jax.registry import ConfigError

D = 12  # Pixels of the small models' D x 1 x 1 images.
# Both networks of the paper at toy sizes: tanh, sigma = exp of the head, two layers per block.
ONE_LAYER = {
  "model.name": "mlp",
  "model.hidden_dim": 8,
  "model.num_hidden_layers": 2,
  "model.latent_dim": 3,
  "model.activation": "tanh",
  "model.std_head": "log_std",
  "model.init_scheme": "flax",
}
TWO_LAYERS = {
  **ONE_LAYER,
  "model.name": "hvae2",
  "model.latent_dim_1": 4,
  "model.hidden_dim_2": 5,
  "model.latent_dim": 2,
}


def _state(overrides, objective="iwae", k=3):
  return make_model(
    {**overrides, "objective.name": objective, "objective.num_samples": k}, image_shape=(D, 1, 1)
  )


def _binary(n: int, seed: int = 0) -> np.ndarray:
  return (np.random.RandomState(seed).rand(n, D, 1, 1) < 0.4).astype(np.float32)


def _block(p, h):
  """A tanh MLP block's (mu, logvar) in float64; its second head is log sigma."""
  dense = lambda h, layer: (
    h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
  )
  h = np.tanh(dense(np.tanh(dense(h, p["hidden"])), p["hidden_2"]))
  return dense(h, p["mu"]), 2 * dense(h, p["logvar"])


def _log_px(p, h, x):
  dense = lambda h, layer: (
    h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
  )
  logits = dense(np.tanh(dense(np.tanh(dense(h, p["hidden"])), p["hidden_2"])), p["logits"])
  return (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(-1)


def _normal(z, mu, logvar):
  return stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)


def numpy_log_weights(name, params, x_BxD, eps_KxBxE):
  """log p(x, latents) - log q(latents | x) per sample, written out layer by layer."""
  p = jax.device_get(params)
  x = np.asarray(x_BxD, np.float64)
  if name == "mlp":
    mu, logvar = _block(p["encoder"], x)
    z = mu + np.exp(0.5 * logvar) * eps_KxBxE
    return _log_px(p["decoder"], z, x) + _normal(z, 0, 0) - _normal(z, mu, logvar)
  l1 = p["q_h1"]["mu"]["bias"].shape[0]
  mu1, logvar1 = _block(p["q_h1"], x)
  h1 = mu1 + np.exp(0.5 * logvar1) * eps_KxBxE[..., :l1]
  mu2, logvar2 = _block(p["q_h2"], h1)
  h2 = mu2 + np.exp(0.5 * logvar2) * eps_KxBxE[..., l1:]
  mu_p, logvar_p = _block(p["p_h1"], h2)
  log_p = _normal(h2, 0, 0) + _normal(h1, mu_p, logvar_p) + _log_px(p["decoder"], h1, x)
  return log_p - _normal(h1, mu1, logvar1) - _normal(h2, mu2, logvar2)


@pytest.mark.parametrize("overrides,units", [(ONE_LAYER, 3), (TWO_LAYERS, 4 + 2)])
def test_importance_weights_match_numpy_float64(overrides, units):
  state, _, _, _ = _state(overrides)
  x = _binary(5)
  key = jax.random.key(1)  # importance_terms draws eps = normal(key, K x B x units).
  eps = np.asarray(jax.random.normal(key, (7, 5, units)), np.float64)
  logits, log_p, log_q = state.apply_fn(
    {"params": state.params}, jnp.asarray(x), key, 7, method="importance_terms"
  )
  chex.assert_shape([log_p, log_q], (7, 5))
  chex.assert_shape(logits, (7, 5, D, 1, 1))
  x_flat = x.reshape(5, D)
  log_px = (
    x_flat * -np.logaddexp(0, -np.asarray(logits, np.float64).reshape(7, 5, D))
    + (1 - x_flat) * -np.logaddexp(0, np.asarray(logits, np.float64).reshape(7, 5, D))
  ).sum(-1)
  expected = numpy_log_weights(overrides["model.name"], state.params, x_flat, eps)
  np.testing.assert_allclose(log_px + log_p - log_q, expected, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("overrides,units", [(ONE_LAYER, 3), (TWO_LAYERS, 6)])
def test_vae_k_and_iwae_losses_are_the_mean_and_the_logmeanexp_of_the_weights(overrides, units):
  x, key, k = _binary(4), jax.random.key(5), 6
  eps = np.asarray(jax.random.normal(key, (k, 4, units)), np.float64)  # The objectives' noise.
  for objective in ("vae_k", "iwae"):
    state, _, fn, hparams = _state(overrides, objective, k)
    loss, metrics = fn(state.params, state.apply_fn, jnp.asarray(x), key, hparams)
    log_w = numpy_log_weights(overrides["model.name"], state.params, x.reshape(4, D), eps)
    bound = log_w.mean(0) if objective == "vae_k" else special.logsumexp(log_w, 0) - np.log(k)
    np.testing.assert_allclose(loss, -bound.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss)
    if objective == "vae_k":  # The k-sample ELBO's two terms add up to its loss.
      np.testing.assert_allclose(metrics["bce"] + metrics["kl"], loss, rtol=1e-5)


def test_one_sample_vae_k_and_iwae_are_the_same_objective():
  x, key = jnp.asarray(_binary(4)), jax.random.key(2)
  losses = [_state(TWO_LAYERS, name, 1) for name in ("vae_k", "iwae")]
  (state, _, fn_v, hp_v), (_, _, fn_i, hp_i) = losses
  grad_v = jax.grad(lambda p: fn_v(p, state.apply_fn, x, key, hp_v)[0])(state.params)
  grad_i = jax.grad(lambda p: fn_i(p, state.apply_fn, x, key, hp_i)[0])(state.params)
  chex.assert_trees_all_close(grad_v, grad_i, rtol=1e-5, atol=1e-6)


def _noise(key, i: int, j: int, units: int) -> np.ndarray:
  key_ij = jax.random.fold_in(jax.random.fold_in(key, i), j)
  return np.asarray(jax.random.normal(key_ij, (1, 1, units))[0, 0], np.float64)


def test_hierarchical_estimator_is_exact_for_any_chunking():
  state, _, _, _ = _state(TWO_LAYERS)
  x, key = _binary(7), jax.random.key(4)
  whole = evaluate.iwae_log_likelihood(
    state.params, state.apply_fn, x, key, 30, batch_size=7, sample_chunk=30
  )
  chunked = evaluate.iwae_log_likelihood(
    state.params, state.apply_fn, x, key, 30, batch_size=3, sample_chunk=7
  )
  np.testing.assert_allclose(whole["iwae"], chunked["iwae"], rtol=1e-5)
  # Sample j of example i draws normal(fold_in(fold_in(key, i), j), (1, 1, L1 + L2)).
  eps = np.stack([[_noise(key, i, j, 6) for i in range(7)] for j in range(30)])
  log_w = numpy_log_weights("hvae2", state.params, x.reshape(7, D), eps)
  np.testing.assert_allclose(whole["iwae"], special.logsumexp(log_w, 0) - np.log(30), rtol=1e-4)
  np.testing.assert_allclose(whole["elbo"], log_w.mean(0), rtol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A small hvae2 and a small one-layer model, each trained 2 epochs on binarized data."""
  splits = {"train": synthetic_split(400, 0, (D, 1, 1)), "test": synthetic_split(200, 1, (D, 1, 1))}
  out = {}
  for name, overrides in (("one", ONE_LAYER), ("two", TWO_LAYERS)):
    config = config_lib.from_flat(
      {
        **overrides,
        "objective.name": "iwae",
        "objective.num_samples": 5,
        "data.binarize": True,
        "optim.batch_size": 20,
        "optim.num_epochs": 2,
        "optim.lr_schedule": "staged",
        "model.output_bias": "data_mean",
        "run.progress": False,
        "run.save_images": False,
        "run.tensorboard": False,
      }
    )
    out[name] = training.train_and_evaluate(config, tmp_path_factory.mktemp(name), splits)[0]
  x = evaluate.binarize(splits["test"][0], jax.random.key(0))
  return out, x


@pytest.mark.parametrize("name", ["one", "two"])
def test_the_bound_rises_with_k_on_a_trained_model(trained, name):
  states, x = trained
  state = states[name]
  bounds = [
    evaluate.iwae_log_likelihood(state.params, state.apply_fn, x, jax.random.key(k), k)[
      "iwae"
    ].mean()
    for k in (1, 5, 50, 500)
  ]
  assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds


def test_staged_schedule_scales_adam_updates_by_stage():
  optim = config_lib.Optim(lr_schedule="staged", lr_stage_growth=3, lr_stage_decay=0.5)
  # Epoch -> stage: 0 | 1 2 3 | 4 ... 12 | 13 ...
  assert [float(group_lib.stage_factor(optim, e)) for e in (0, 1, 3, 4, 12, 13, 39, 40)] == [
    1.0,
    0.5,
    0.5,
    0.25,
    0.25,
    0.125,
    0.125,
    0.0625,
  ]
  staged, constant = (
    group_lib.optimizer(optim, steps_per_epoch=2),
    group_lib.optimizer(config_lib.Optim()),
  )
  params = {"w": jnp.ones(3)}
  s_state, c_state = staged.init(params), constant.init(params)
  for step in range(10):  # Steps 2-7 are epochs 1-3 (stage 1); 8-9 epoch 4 (stage 2).
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5]) * (step + 1)}
    s_update, s_state = staged.update(grads, s_state, params)
    c_update, c_state = constant.update(grads, c_state, params)
    factor = 1.0 if step < 2 else 0.5 if step < 8 else 0.25
    np.testing.assert_allclose(s_update["w"], factor * c_update["w"], rtol=1e-6)
  # 'constant' keeps the older runs' one-transformation state; both hold the base rate.
  assert group_lib.adam_state(c_state) is c_state and isinstance(s_state, tuple)
  assert float(group_lib.adam_state(s_state).hyperparams["learning_rate"]) == pytest.approx(1e-3)


def test_saved_configs_without_the_added_keys_still_match():
  current = config_lib.flatten(config_lib.default_sections())
  saved = {k: v for k, v in current.items() if k not in config_lib.ADDED}
  assert config_lib.differences(saved, current) == []
  conv = config_lib.effective(config_lib.from_flat({"model.name": "conv"}))  # Not its settings.
  assert (
    config_lib.differences({k: v for k, v in conv.items() if k not in config_lib.ADDED}, conv) == []
  )
  staged = {**current, "optim.lr_schedule": "staged"}
  assert config_lib.differences(saved, staged) == ["optim.lr_schedule: 'constant' -> 'staged'"]


def test_output_bias_starts_at_the_logit_of_the_mean_pixel():
  mean_D = np.linspace(0.0, 1.0, D).astype(np.float32)  # Ends at 0 and 1: clipped.
  x = np.round(np.broadcast_to(mean_D, (300, D)) * 255).astype(np.uint8).reshape(300, D, 1, 1)
  for overrides in (ONE_LAYER, TWO_LAYERS):
    config = config_lib.from_flat(
      {**overrides, "objective.name": "iwae", "model.output_bias": "data_mean"}
    )
    group = group_lib.make_group(config, {"train": (x, None), "test": (x, None)})
    bias = group_lib.unstack(group_lib.create_states(group)[0]).params["decoder"]["logits"]["bias"]
    m = np.clip(np.round(mean_D * 255) / 255, 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(bias, np.log(m / (1 - m)), rtol=1e-5, atol=1e-5)
  default = make_model(dict(ONE_LAYER), image_shape=(D, 1, 1))[0]  # 'init': the scheme's zeros.
  assert not np.any(np.asarray(default.params["decoder"]["logits"]["bias"]))


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      {"model.name": "hvae2", "objective.name": "beta_tcvae"},
      "config.objective.name='beta_tcvae': reads the encoder's (mu, logvar) as q(z|x) and "
      "N(0, I) as p(z); model 'hvae2' has other latents here (a hierarchy of its own, or "
      "another config.prior / config.posterior): choose elbo, vae_k or iwae, which take any",
    ),
    (
      {"optim.lr_schedule": "cosine"},
      "config.optim.lr_schedule='cosine': expected one of constant, staged",
    ),
    (
      {"model.activation": "gelu"},
      "config.model.activation='gelu': expected one of relu, tanh, softplus",
    ),
    (
      {"model.name": "hvae2", "objective.name": "iwae", "model.latent_dim_1": 0},
      "config.model.latent_dim_1=0: expected an integer >= 1",
    ),
  ],
)
def test_bad_settings_are_refused_by_name(overrides, message):
  with pytest.raises(
    ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"
  ):
    make_model(overrides, image_shape=(D, 1, 1))


def test_table_script_trains_evaluates_and_reuses_its_cells(tmp_path, monkeypatch):
  from experiments import burda2015

  argv = [
    "burda2015",
    "--workdir",
    str(tmp_path),
    "--stages",
    "2",
    "--cells",
    "2:iwae:5",
    "--train-examples",
    "60",
    "--num-samples",
    "20",
    "--test-examples",
    "20",
    "--stage-examples",
    "20",
    "--keep-in",
    str(tmp_path / "kept"),
  ]
  monkeypatch.setattr(sys, "argv", argv)
  load_data = burda2015.data.load_data  # Each epoch's test loss on 100 images, not 10,000.
  monkeypatch.setattr(
    burda2015.data,
    "load_data",
    lambda config: {**(s := load_data(config)), "test": tuple(a[:100] for a in s["test"])},
  )
  assert burda2015.main() == 0
  results = json.loads((tmp_path / "burda2015.json").read_text())
  cell = results["cells"]["2:iwae:5"]
  assert (
    cell["paper"] == 83.89
    and cell["test_examples"] == 20
    and len(cell["active_units_per_layer"]) == 2
  )
  assert set(cell["stage_nll"]) == {"1", "4"} and np.isfinite(cell["ours"])
  assert cell["gap"] == pytest.approx(cell["ours"] - 83.89)
  metrics = (tmp_path / "2layer_iwae_k5" / "metrics.jsonl").read_text()
  assert [json.loads(line)["epoch"] for line in metrics.splitlines()] == [1, 2, 3, 4]
  assert burda2015.main() == 0  # Again: every stage found trained and estimated.
  assert (
    tmp_path / "2layer_iwae_k5" / "metrics.jsonl"
  ).read_text() == metrics  # Nothing retrained.
  assert json.loads((tmp_path / "burda2015.json").read_text())["cells"] == results["cells"]
  # The last stage's checkpoint and estimates are kept; a new machine's workdir starts from them.
  kept = tmp_path / "kept" / "2layer_iwae_k5"
  assert [p.name for p in (kept / "checkpoints").iterdir()] == ["4"]
  assert (kept / "epoch4_nll_20_20.json").exists() and (
    kept / "metrics.jsonl"
  ).read_text() == metrics
  shutil.rmtree(tmp_path / "2layer_iwae_k5")
  assert burda2015.main() == 0
  assert (
    tmp_path / "2layer_iwae_k5" / "metrics.jsonl"
  ).read_text() == metrics  # Nothing retrained.
  assert json.loads((tmp_path / "burda2015.json").read_text())["cells"] == results["cells"]


def test_one_sample_cell_fills_both_columns(tmp_path):
  from experiments import burda2015

  args = argparse.Namespace(
    workdir=tmp_path, stages=1, num_samples=5000, test_examples=0, stage_examples=1000
  )
  final = {
    "test_nll": 90.0,
    "test_neg_elbo": 95.0,
    "active_units_per_layer": [30],
    "examples": 10000,
    "num_samples": 5000,
    "seconds": 1.0,
  }
  stage = {**final, "test_nll": 91.0, "examples": 1000}
  burda2015.report(
    args, {(1, "vae", 1): {"stages": {0: stage, "final": final}, "train_seconds": 60.0}}
  )
  cells = json.loads((tmp_path / "burda2015.json").read_text())["cells"]
  assert set(cells) == {"1:vae:1", "1:iwae:1"} and cells["1:iwae:1"]["ours"] == 90.0
  assert cells["1:vae:1"]["gap"] == pytest.approx(90.0 - 86.76)
  assert cells["1:vae:1"]["stage_nll"] == {"1": 91.0}  # The stage curve: on its own images.
  assert "| 1 | 5 | 86.47 | not run |" in (tmp_path / "burda2015.md").read_text()
