"""Conditional models: the label reaches q(z|x, y) and p(x|y, z); a run carries the labels
through the compiled epoch; every command of a trained run takes them; sample --label draws
the class asked for."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_split

import vae_jax
from vae_jax import __main__ as cli, classifier, data, models, objectives
from vae_jax.registry import ConfigError


def _build(name="cmlp", shape=(28, 28, 1), **settings):
  entry = models.REGISTRY.get(name)
  return models.build((entry, {**entry.settings, **settings}), shape)


@pytest.mark.parametrize("name", ["cmlp", "cconv"])
def test_the_label_reaches_the_encoder_and_the_decoder(name):
  vae = _build(name, latent_dim=3, classifier_hidden=7)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  params = vae.init(jax.random.key(0), x)["params"]
  assert set(params) == {"encoder", "decoder", "classifier"}  # init builds q(y|x) too.
  encode = lambda y: vae.apply({"params": params}, x, labels=y, method="encode")
  decode = lambda z, y: vae.apply({"params": params}, z, labels=y, method="decode")
  mu_a, logvar_a = encode(jnp.array([0, 1, 2, 3]))
  mu_b, _ = encode(jnp.array([0, 1, 2, 4]))
  chex.assert_shape([mu_a, logvar_a], (4, 3))
  np.testing.assert_array_equal(mu_a[:3], mu_b[:3])
  assert not np.allclose(mu_a[3], mu_b[3])  # Only the example whose label changed moves.
  # Class indices and one-hot rows are the same input; decode broadcasts labels over K.
  np.testing.assert_array_equal(mu_a, encode(jax.nn.one_hot(jnp.array([0, 1, 2, 3]), 10))[0])
  z_KxBxL = jax.random.normal(jax.random.key(2), (2, 4, 3))
  logits = decode(z_KxBxL, jnp.array([5, 5, 6, 6]))
  chex.assert_shape(logits, (2, 4, 28, 28, 1))
  np.testing.assert_array_equal(logits[1], decode(z_KxBxL[1], jnp.array([5, 5, 6, 6])))
  assert not np.allclose(logits[0, 0], decode(z_KxBxL[0], jnp.array([7, 5, 6, 6]))[0])
  chex.assert_shape(vae.apply({"params": params}, x, method="classify"), (4, 10))


@pytest.mark.parametrize("layers", [1, 2])
def test_cmlp_encodes_every_class_at_once_as_the_batch_repeated_per_class(layers):
  vae = _build(latent_dim=3, hidden_dim=16, num_hidden_layers=layers, activation="softplus")
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  params = {"params": vae.init(jax.random.key(0), x)["params"]}
  shared = vae.apply(params, x, method="encode_each_class")
  repeated = vae.apply(params, x, method=models.conditional.ConditionalVAE.encode_each_class)
  chex.assert_shape(shared, (40, 3))
  chex.assert_trees_all_close(shared, repeated, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(shared[0][8:12], encode_class(vae, params, x, 2), rtol=1e-5, atol=1e-6)


def encode_class(vae, params, x, y):
  return vae.apply(params, x, labels=jnp.full(len(x), y), method="encode")[0]


def test_the_label_joins_the_first_layers_of_cmlp():
  shapes = jax.tree.map(
    jnp.shape, _build(latent_dim=5).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  )
  assert shapes["params"]["encoder"]["hidden"]["kernel"] == (784 + 10, 400)
  assert shapes["params"]["decoder"]["hidden"]["kernel"] == (5 + 10, 400)
  assert "classifier" not in shapes["params"]  # classifier_hidden 0: none.


def test_every_objective_sees_a_conditional_model_with_the_batch_labels():
  vae = _build(latent_dim=3)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  labels = jnp.array([3, 1, 4, 1])
  params = vae.init(jax.random.key(0), x)["params"]
  for name in ("elbo", "iwae", "beta_tcvae"):
    entry = objectives.REGISTRY.get(name)
    hparams = objectives.make_hparams((entry, entry.settings))
    bound = lambda *a, **k: vae.apply(*a, **k, labels=labels)
    want = entry.target.fn(params, bound, x, jax.random.key(5), hparams)
    got = objectives.with_labels(entry.target, True)(
      params, vae.apply, x, jax.random.key(5), hparams, labels
    )
    chex.assert_trees_all_equal(got, want)


def _cli(capsys, *argv):
  status = cli.main([str(a) for a in argv])
  return status, capsys.readouterr()


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, session_idx_dir):
  """A 2-epoch cmlp run on the small IDX data, trained through the CLI in this process."""
  workdir = tmp_path_factory.mktemp("conditional") / "run"
  status = cli.main(
    [
      "train",
      f"--workdir={workdir}",
      "--config.data.source=idx",
      f"--config.data.dir={session_idx_dir}",
      "--config.model.name=cmlp",
      "--config.model.latent_dim=4",
      "--config.optim.num_epochs=2",
      "--config.run.progress=False",
    ]
  )
  assert status == 0
  return workdir


def test_every_command_of_a_conditional_run_takes_the_labels(
  conditional_run, session_idx_dir, tmp_path, capsys
):
  run = vae_jax.open_run(conditional_run)
  x_u8, labels = data.load_split("idx", "test", str(session_idx_dir))
  x = x_u8 / np.float32(255)
  status, out = _cli(capsys, "evaluate", f"--workdir={conditional_run}")
  result = __import__("json").loads(out.out)
  assert status == 0 and result["loss"] == pytest.approx(result["recorded_test_loss"], rel=1e-6)
  mu, _ = vae_jax.encode(run.state, x, labels)
  status, out = _cli(
    capsys, "encode", f"--workdir={conditional_run}", f"--out={tmp_path / 'z.npz'}"
  )
  np.testing.assert_allclose(np.load(tmp_path / "z.npz")["mu"], mu, rtol=1e-5, atol=1e-6)
  assert not np.allclose(mu, vae_jax.encode(run.state, x, (labels + 1) % 10)[0])
  with pytest.raises(ValueError, match="is conditional; pass the images' labels"):
    vae_jax.encode(run.state, x)
  for args in (
    ["sample", "--label=3", f"--out={tmp_path / 's.png'}"],
    ["sample", f"--out={tmp_path / 'all.png'}"],
    ["reconstruct", f"--out={tmp_path / 'r.png'}"],
    ["likelihood", "--num_samples=3", "--num=5"],
  ):
    status, out = _cli(capsys, args[0], f"--workdir={conditional_run}", *args[1:])
    assert status == 0, out.err
  np.testing.assert_array_equal(
    vae_jax.sample(run.state, 4, jax.random.key(0), 3),
    vae_jax.decode(run.state, jax.random.normal(jax.random.key(0), (4, 4)), [3, 3, 3, 3]),
  )


def test_a_conditional_model_without_labels_or_with_unknown_classes_is_refused(tmp_path):
  x, y = synthetic_split(40, 0)
  config = vae_jax.get_config(model="cmlp")
  config.run.progress = False
  config.optim.batch_size = 8
  for labels, message in ((np.full(40, -1), "has no labels"), (y + 5, "labels up to 14")):
    with pytest.raises(ConfigError, match=message):
      vae_jax.train(config, tmp_path / "run", {"train": (x, labels), "test": (x, y)})
    assert not (tmp_path / "run").exists()
  with pytest.raises(ConfigError, match="does not see them; choose a conditional model"):
    vae_jax.parse_config(vae_jax.get_config(model="mlp", objective="m2"))


def test_sample_label_draws_images_the_projects_classifier_assigns_to_that_class(tmp_path):
  """A 2-latent cmlp on 3,000 real digits: its samples of class k, classified by the MLP of
  vae_jax.classifier trained on the same images, are class k far above chance (0.1; this
  setting measured 0.78)."""
  (x_u8, y), (xt_u8, yt) = data.load_split("bundled", "train"), data.load_split("bundled", "test")
  splits = {"train": (x_u8[:3000], y[:3000]), "test": (xt_u8[:200], yt[:200])}
  config = vae_jax.get_config(model="cmlp")
  config.model.latent_dim = 2
  config.optim.num_epochs = 8
  config.run.update(progress=False, save_images=False, tensorboard=False)
  state, _ = vae_jax.train(config, tmp_path / "run", splits)
  params = classifier.train(
    jax.random.key(0)[None], x_u8[:3000] / np.float32(255), y[:3000], classifier.Recipe(steps=400)
  )
  labels = np.repeat(np.arange(10), 30)
  images = vae_jax.sample(state, len(labels), jax.random.key(1), labels)
  assert classifier.accuracy(params, "mlp", images, labels)[0] > 0.6
