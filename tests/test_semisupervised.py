"""The M2 objective (Kingma et al. 2014) against independent computations, the label draw, a
semi-supervised run, and M1+M2 on a run's posterior means (data source 'encoded')."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cli, run_cli_fresh, train_args
from test_checkpoint import assert_trees_equal_bitwise, kill_at, metrics, saved_arrays

import vae_jax
from vae_jax import data, losses, models, objectives, semisupervised, step
from vae_jax.__main__ import main as cli_main
from vae_jax.registry import ConfigError

C = 10  # Classes of the tiny model.


def _tiny():
  entry = models.REGISTRY.get("cmlp")
  vae = models.build(
    (entry, {**entry.settings, "hidden_dim": 16, "latent_dim": 3, "classifier_hidden": 8}),
    (4, 4, 1),
  )
  x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
  return vae, vae.init(jax.random.key(0), x)["params"], x


def _hparams(**settings):
  entry = objectives.REGISTRY.get("m2")
  return objectives.make_hparams((entry, {**entry.settings, **settings}))


def _labelled_neg_bound(vae, params, x, y, eps_BxL):
  """-L(x, y) = -log p(x|y, z) + KL(q(z|x, y) || N(0, I)) + log C at z = mu + sigma eps."""
  mu, logvar = vae.apply({"params": params}, x, labels=y, method="encode")
  z = models.reparameterize(mu, logvar, eps_BxL)
  logits = vae.apply({"params": params}, z, labels=y, method="decode")
  return losses.bce_per_example(logits, x) + losses.kl_per_example(mu, logvar) + jnp.log(C)


@pytest.mark.parametrize("key", [None, jax.random.key(7)], ids=["z=mu", "sampled"])
def test_the_unlabelled_bound_is_the_q_weighted_sum_of_the_ten_labelled_bounds(key):
  vae, params, x = _tiny()
  batch = x.shape[0]
  eps_CxBxL = (
    jnp.zeros((C, batch, 3))
    if key is None
    else jax.random.normal(key, (C * batch, 3)).reshape(C, batch, 3)
  )

  def loop(params):  # -U(x) = sum_y q(y|x) (-L(x, y)) - H(q(y|x)), a Python loop over y.
    q_BxC = jax.nn.softmax(vae.apply({"params": params}, x, method="classify"))
    total = 0.0
    for y in range(C):
      labels = jnp.full((batch,), y)
      total = total + jnp.sum(
        q_BxC[:, y] * _labelled_neg_bound(vae, params, x, labels, eps_CxBxL[y])
      )
    return total + jnp.sum(q_BxC * jnp.log(q_BxC))

  m2 = lambda p: semisupervised.m2(p, vae.apply, x, key, _hparams(), jnp.full((batch,), -1))[0]
  np.testing.assert_allclose(m2(params), loop(params), rtol=1e-5)
  chex.assert_trees_all_close(jax.grad(m2)(params), jax.grad(loop)(params), rtol=2e-4, atol=1e-5)


def test_with_every_label_and_alpha_zero_the_labelled_bound_is_the_conditional_elbo():
  vae, params, x = _tiny()
  labels = jnp.array([3, 1, 4, 1, 5])
  entry = objectives.REGISTRY.get("elbo")
  elbo = objectives.with_labels(entry.target, True)(
    params, vae.apply, x, None, objectives.make_hparams((entry, entry.settings)), labels
  )[0]
  m2 = lambda alpha: semisupervised.m2(params, vae.apply, x, None, _hparams(alpha=alpha), labels)
  loss, metrics = m2(0.0)
  np.testing.assert_allclose(loss, elbo + len(labels) * np.log(C), rtol=1e-6)  # - log p(y).
  log_q = jax.nn.log_softmax(vae.apply({"params": params}, x, method="classify"))
  ce = -np.sum(np.take_along_axis(np.asarray(log_q), np.asarray(labels)[:, None], 1))
  np.testing.assert_allclose(metrics["class_ce"], ce, rtol=1e-6)
  np.testing.assert_allclose(m2(0.3)[0], loss + 0.3 * ce, rtol=1e-6)  # All labelled: N / N_l = 1.
  assert metrics["labelled"] == 5
  assert metrics["class_error"] == np.sum(np.argmax(log_q, -1) != labels)


def test_a_label_draw_keeps_exactly_n_per_class_and_is_the_same_for_the_same_key():
  labels = jnp.asarray(np.random.RandomState(0).randint(0, C, 1000))
  draw = lambda seed, n: np.asarray(step.labelled_mask(jax.random.key(seed), labels, n, C))
  for n in (1, 7, 30):
    counts = np.bincount(np.asarray(labels)[draw(0, n)], minlength=C)
    np.testing.assert_array_equal(counts, n)
  np.testing.assert_array_equal(draw(0, 7), draw(0, 7))
  assert (draw(0, 7) != draw(1, 7)).any()
  assert draw(0, 7)[draw(0, 3)].all()  # Fewer labels keep a subset: the same ranking.


def _m2_config(**data_settings):
  config = vae_jax.get_config(model="cmlp", objective="m2")
  config.model.update(hidden_dim=32, latent_dim=4, classifier_hidden=16)
  config.data.update(**data_settings)
  config.optim.num_epochs = 1
  config.run.update(progress=False, save_images=False, tensorboard=False)
  return config


def test_a_semi_supervised_run_sees_its_draw_of_labels_and_evaluate_reports_the_test_error(
  small_splits, tmp_path
):
  state, records = vae_jax.train(_m2_config(labels_per_class=3), tmp_path / "run", small_splits)
  (record,) = records
  assert record["train_labelled"] * record["train_examples"] == pytest.approx(3 * C)
  assert record["test_labelled"] == 1.0
  x_test, y_test = small_splits["test"]
  error = np.mean(np.argmax(vae_jax.classify(state, x_test / np.float32(255)), -1) != y_test)
  assert record["test_class_error"] == pytest.approx(error)
  keys = vae_jax.create_state(_m2_config(labels_per_class=3))[1]
  kept = step.kept_labels(keys, jnp.asarray(small_splits["train"][1], jnp.int32), 3, C)
  np.testing.assert_array_equal(
    np.flatnonzero(np.asarray(kept) >= 0),
    semisupervised.labelled_indices(1, small_splits["train"][1], 3, C),
  )


def test_labels_per_class_is_refused_where_it_cannot_apply(small_splits, tmp_path):
  config = vae_jax.get_config(model="cmlp")
  config.data.labels_per_class = 5
  with pytest.raises(ConfigError, match="objective 'elbo' trains on every label or none"):
    vae_jax.parse_config(config)
  with pytest.raises(ConfigError, match="labels_per_class=1000: class"):
    vae_jax.train(_m2_config(labels_per_class=1000), tmp_path / "run", small_splits)
  no_classifier = _m2_config()
  no_classifier.model.classifier_hidden = 0
  with pytest.raises(ConfigError, match="has no classifier q"):
    vae_jax.train(no_classifier, tmp_path / "run", small_splits)
  assert not (tmp_path / "run").exists()


def test_m1_m2_trains_on_draws_from_the_active_posterior_of_a_run(tmp_path):
  m1 = vae_jax.get_config()  # A small M1 on 600 real digits, reloadable from its config.
  m1.model.update(hidden_dim=64, latent_dim=6)
  m1.data.update(train_examples=600, test_examples=100)
  m1.optim.num_epochs = 2
  m1.run.update(progress=False, save_images=False, tensorboard=False)
  trained_run = tmp_path / "m1"
  vae_jax.train(m1, trained_run)
  run = vae_jax.open_run(trained_run)
  splits = data.load_data(run.settings.data)
  features, labels = data.load_split("encoded", "test", str(trained_run))
  mu, logvar = vae_jax.encode(run.state, splits["test"][0] / np.float32(255))
  mu_train, _ = vae_jax.encode(run.state, splits["train"][0] / np.float32(255))
  active = np.var(mu_train.astype(np.float64), axis=0) > 0.01
  chex.assert_shape(features, (len(mu), 1, int(active.sum()), 2))
  np.testing.assert_array_equal(features[:, 0, :, 0], mu[:, active])
  np.testing.assert_array_equal(features[:, 0, :, 1], logvar[:, active])
  # Evaluation sees the mean; a training step a draw from the posterior.
  x = jnp.asarray(features[:4])
  np.testing.assert_array_equal(step.to_float(x), features[:4, ..., :1])
  key = jax.random.key(5)
  draw = (
    mu[:4, active]
    + np.exp(0.5 * logvar[:4, active])
    * np.asarray(jax.random.normal(jax.random.fold_in(key, 3), (4, 1, int(active.sum()), 1)))[
      :, 0, :, 0
    ]
  )
  np.testing.assert_allclose(step.to_float(x, key)[:, 0, :, 0], draw, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labels, splits["test"][1])
  config = _m2_config(source="encoded", dir=str(trained_run))
  config.objective.update(likelihood="normal", gaussian_sigma=0.0)
  _, records = vae_jax.train(config, tmp_path / "m1m2")
  assert np.isfinite(records[-1]["test_loss"]) and 0 <= records[-1]["test_class_error"] <= 1
  with pytest.raises(data.DataError, match="needs a trained run there"):
    data.load_split("encoded", "train", str(tmp_path / "nothing"))
  config.objective.likelihood = "bernoulli"
  with pytest.raises(vae_jax.ConfigError, match="latent codes are real values"):
    vae_jax.train(config, tmp_path / "refused")
  assert not (tmp_path / "refused").exists()


M2_ARGS = (
  "--config.model.name=cmlp",
  "--config.model.hidden_dim=32",
  "--config.model.latent_dim=4",
  "--config.model.classifier_hidden=16",
  "--config.objective.name=m2",
  "--config.data.labels_per_class=5",
  "--config.run.tensorboard=False",
)


def test_a_semi_supervised_run_killed_resumes_bit_identical_and_reopens_in_a_fresh_process(
  session_idx_dir, tmp_path
):
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  kill_at("after_checkpoint_1", killed, session_idx_dir, *M2_ARGS)  # SIGKILLed after epoch 1.
  resumed = cli(*train_args(killed, session_idx_dir, *M2_ARGS))
  assert resumed.returncode == 0 and "Resuming from" in resumed.stdout, resumed.stderr
  assert cli_main(train_args(whole, session_idx_dir, *M2_ARGS)) == 0
  assert metrics(killed) == metrics(whole)
  assert_trees_equal_bitwise(saved_arrays(killed), saved_arrays(whole))
  evaluated, sampled = run_cli_fresh(
    ["evaluate", f"--workdir={killed}"],
    ["sample", f"--workdir={killed}", "--label=7", "--num=4", f"--out={tmp_path / 's.png'}"],
  )
  assert evaluated.returncode == 0 and sampled.returncode == 0, evaluated.stderr + sampled.stderr
  result = json.loads(evaluated.stdout.splitlines()[-1])
  assert result["class_error"] == metrics(killed)[-1]["test_class_error"]
