"""Ideas outlive their run: a model and an objective of one's own, in a file outside vae_jax,
train, are killed and resumed, swept, then evaluated, sampled and reopened from fresh
processes (the run recorded the module). Registration mistakes are refused at once."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import cli as cli_here, run_cli_fresh, train_args, tree_bytes
from flax import struct
from test_checkpoint import kill_at

import vae_jax
from vae_jax import __main__ as cli, models, objectives
from vae_jax.registry import ConfigError

EXAMPLE = Path(__file__).parent.parent / "experiments" / "my_ideas.py"
PLUGIN_ARGS = (
  "--plugin=my_ideas",
  "--config.model.name=resmlp",
  "--config.model.hidden_dim=32",
  "--config.objective.name=cyclical",
  "--config.run.tensorboard=False",
)


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
  """A directory outside the repository holding my_ideas.py, on this process's and its
  subprocesses' path; the entries it registers are removed afterwards."""
  directory = tmp_path / "ideas"
  directory.mkdir()
  shutil.copy(EXAMPLE, directory / "my_ideas.py")
  monkeypatch.syspath_prepend(str(directory))
  monkeypatch.setenv("PYTHONPATH", f"{directory}:{__import__('os').environ.get('PYTHONPATH', '')}")
  yield directory
  sys.modules.pop("my_ideas", None)
  models.REGISTRY.entries.pop("resmlp", None)
  objectives.REGISTRY.entries.pop("cyclical", None)


def test_a_plugin_run_trains_resumes_sweeps_and_reopens_from_fresh_processes(
  plugin_dir, tmp_path, session_idx_dir, capsys
):
  workdir = tmp_path / "run"
  kill_at("after_checkpoint_1", workdir, session_idx_dir, *PLUGIN_ARGS)  # SIGKILLed after epoch 1.
  resumed = cli_here(*train_args(workdir, session_idx_dir, *PLUGIN_ARGS))  # The same command.
  assert resumed.returncode == 0, resumed.stderr
  assert "Resuming from" in resumed.stdout
  assert [
    r["epoch"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  ] == [1, 2]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["plugins"] == ["my_ideas"]
  # Each entry's own settings and defaults: resmlp's hidden_dim as given, cyclical's beta 0.25.
  assert saved["model"] == {
    "name": "resmlp",
    "latent_dim": 20,
    "compute_dtype": "float32",
    "hidden_dim": 32,
    "num_blocks": 1,
  }
  assert saved["objective"]["beta"] == 0.25 and "free_bits" not in saved["objective"]

  study = tmp_path / "study.py"
  study.write_text(
    "import vae_jax\n\ndef get_config():\n"
    "  return vae_jax.make_study('cyclical_beta', 'beta?', {'objective.beta': [0.5, 2.0]}, 2, {\n"
    "      'plugins': ['my_ideas'], 'model.name': 'resmlp', 'objective.name': 'cyclical',\n"
    f"      'data.source': 'idx', 'data.dir': '{session_idx_dir}', 'optim.num_epochs': 1,\n"
    "      'run.save_images': False, 'run.tensorboard': False})\n"
  )
  swept = cli_here("sweep", f"--config={study}", f"--workdir={tmp_path / 'sweep'}")
  assert swept.returncode == 0, swept.stderr
  rows = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
  assert len(rows) == 5 and rows[0].startswith("objective.beta,seed,test_loss")

  # Fresh processes, no --plugin: the run's record imports my_ideas.
  evaluated, sampled, likelihood = run_cli_fresh(  # One process, its first command evaluate.
    ["evaluate", f"--workdir={workdir}"],
    ["sample", f"--workdir={workdir}", f"--out={tmp_path / 's.png'}", "--num=4"],
    ["likelihood", f"--workdir={workdir}", "--num_samples=4", "--num=8"],
  )
  assert evaluated.returncode == 0, evaluated.stderr
  test_loss = json.loads(evaluated.stdout.splitlines()[-1])
  assert test_loss["loss"] == pytest.approx(test_loss["recorded_test_loss"], rel=1e-5)
  assert sampled.returncode == 0 and (tmp_path / "s.png").stat().st_size > 0, sampled.stderr
  assert likelihood.returncode == 0, likelihood.stderr
  assert np.isfinite(json.loads(likelihood.stdout.splitlines()[-1])["test_nll"])

  config, state, _, meta = vae_jax.load_run(workdir)  # This process imports it from the record.
  assert config.model.name == "resmlp" and type(state.apply_fn.__self__).__name__ == "ResMLP"
  assert meta["epoch"] == 2 and state.params["decoder"]["Dense_0"]["kernel"].shape == (20, 32)

  # The plugin gone: one line naming it and the run; the resume writes nothing.
  before = tree_bytes(workdir)
  (plugin_dir / "my_ideas.py").unlink()
  sys.modules.pop("my_ideas", None)
  importlib.invalidate_caches()
  status = cli.main(
    train_args(workdir, session_idx_dir, "--config.optim.num_epochs=3", *PLUGIN_ARGS[1:])
  )
  assert status == 2 and capsys.readouterr().err.strip().splitlines() == [
    f"vae_jax: error: plugin 'my_ideas' (recorded by run {workdir}): cannot be imported "
    "(ModuleNotFoundError: No module named 'my_ideas'); put its package on PYTHONPATH or install it"
  ]
  assert tree_bytes(workdir) == before


def _parse_error(capsys, *args) -> str:
  assert cli.parse(["train", "--workdir=/nonexistent/w", *args]) == 2
  return capsys.readouterr().err.strip()


def test_each_entry_owns_its_settings_from_the_command_line(plugin_dir, capsys):
  command, _, config = cli.parse(["train", "--workdir=/nonexistent/w", *PLUGIN_ARGS])
  settings = vae_jax.parse_config(config)
  assert settings.model[1]["hidden_dim"] == 32 and settings.objective[1]["beta"] == 0.25
  assert settings.plugins == ("my_ideas",)
  assert _parse_error(capsys, *PLUGIN_ARGS, "--config.model.init_scheme=flax") == (
    "vae_jax: error: config.model.init_scheme=flax: does not apply to model 'resmlp' (its "
    "settings: compute_dtype, hidden_dim, latent_dim, num_blocks; init_scheme is a setting of "
    "cmlp, hamiltonian, hvae2, mlp)"
  )
  assert (
    "unknown config key 'bogus': config.objective.bogus is not a setting of objective 'cyclical'"
    in _parse_error(capsys, *PLUGIN_ARGS, "--config.objective.bogus=1")
  )
  _, _, config = cli.parse(
    ["train", "--workdir=/nonexistent/w", "--config.plugins=('my_ideas',)", *PLUGIN_ARGS[1:]]
  )  # The config's plugins, instead of --plugin.
  assert vae_jax.parse_config(config).model[1]["hidden_dim"] == 32
  # The same keys for the built-in entries keep their own defaults.
  _, _, config = cli.parse(["train", "--workdir=/nonexistent/w", "--plugin=my_ideas"])
  settings = vae_jax.parse_config(config)
  assert settings.model[1]["hidden_dim"] == 400 and settings.objective[1]["beta"] == 1.0


def test_an_unimportable_plugin_is_one_line(capsys):
  assert _parse_error(capsys, "--plugin=no_such_ideas") == (
    "vae_jax: error: plugin 'no_such_ideas' (--plugin): cannot be imported (ModuleNotFoundError: "
    "No module named 'no_such_ideas'); put its package on PYTHONPATH or install it"
  )


@struct.dataclass
class GoodHparams(vae_jax.Hparams):
  weight: float = 1.0


def test_a_taken_name_is_refused_unless_replaced():
  with pytest.raises(ConfigError, match="objective 'elbo' is already registered .*replace=True"):
    vae_jax.register_objective("elbo", GoodHparams)(lambda *a: None)
  with pytest.raises(ConfigError, match="model 'mlp' is already registered .*replace=True"):
    vae_jax.register_model("mlp")(type("Other", (vae_jax.VAE,), {}))
  elbo = objectives.REGISTRY.entries["elbo"]
  try:
    vae_jax.register_objective("elbo", GoodHparams, replace=True)(lambda *a: None)
    assert objectives.REGISTRY.get("elbo").settings == {"weight": 1.0}
  finally:
    objectives.REGISTRY.entries["elbo"] = elbo


def test_hparams_that_are_not_a_flax_struct_dataclass_are_refused():
  class Plain(vae_jax.Hparams):  # Not decorated: its fields would be no settings.
    weight: float = 1.0

  for hparams in (Plain, dict):
    with pytest.raises(
      ConfigError,
      match="must be a subclass of vae_jax.Hparams decorated with @flax.struct.dataclass",
    ):
      vae_jax.register_objective("plain_test", hparams)
  with pytest.raises(ConfigError, match="is not a subclass of vae_jax.VAE"):
    vae_jax.register_model("plain_test")(dict)
  assert (
    "plain_test" not in objectives.REGISTRY.entries and "plain_test" not in models.REGISTRY.entries
  )


@pytest.mark.parametrize(
  "metrics,message",
  [
    ({"rec": 0.0}, "objective 'bad_test': its metrics \\['rec'\\] lack 'loss'"),
    (
      {"loss": 0.0, "kl": np.zeros(3)},
      "objective 'bad_test': metric 'kl' has shape \\(3,\\); expected a scalar",
    ),
  ],
)
def test_an_objective_with_bad_metrics_is_one_line_at_first_trace(
  metrics, message, tmp_path, small_splits
):
  @vae_jax.register_objective("bad_test", GoodHparams)
  def bad(params, apply_fn, x, key, hparams):
    logits, _, _ = apply_fn({"params": params}, x, key)
    return jax.numpy.sum(logits), metrics

  try:
    config = vae_jax.get_config(objective="bad_test")
    with pytest.raises(ConfigError, match=message):
      vae_jax.train(config, tmp_path / "run", small_splits)
    assert not (tmp_path / "run").exists()  # Refused before anything is written.
  finally:
    objectives.REGISTRY.entries.pop("bad_test")


def test_custom_objective_honours_the_configured_likelihood():
  """experiments/custom_objective.py's -log p(x|z) is the configured one (Gaussian here),
  checked against the density written out in numpy."""
  import experiments.custom_objective as custom

  try:
    config = vae_jax.get_config(objective="mmd_vae")
    config.objective.update(likelihood="gaussian", gaussian_sigma=0.1)
    config.model.latent_dim = 2
    state, _ = vae_jax.create_state(config, (4, 4, 1), num_train_examples=8)
    x = np.random.RandomState(0).rand(3, 4, 4, 1).astype(np.float32)
    key = jax.random.key(3)
    _, metrics = custom.mmd_vae(
      state.params,
      state.apply_fn,
      x,
      key,
      custom.MmdHparams(likelihood="gaussian", gaussian_sigma=0.1),
    )
    logits, _, _ = state.apply_fn({"params": state.params}, x, key)  # The same z.
    mean = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    nll = np.sum(0.5 * ((x - mean) / 0.1) ** 2 + np.log(0.1) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(float(metrics["bce"]), nll, rtol=1e-5)
  finally:
    objectives.REGISTRY.entries.pop("mmd_vae", None)
    sys.modules.pop("experiments.custom_objective", None)


def test_an_installed_packages_entry_point_registers_its_entries(tmp_path, monkeypatch):
  """A package installed with an entry point in the group 'vae_jax.plugins' needs no
  --plugin: reading a config imports it."""
  from vae_jax import plugins

  (tmp_path / "ep_ideas.py").write_text(
    "import vae_jax\nfrom vae_jax.models import mlp\n\n"
    "@vae_jax.register_model('ep_test')\nclass Wide(mlp.MLP):\n  hidden_dim: int = 8\n"
  )
  info = tmp_path / "ep_ideas-0.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-ideas\nVersion: 0.1\n")
  (info / "entry_points.txt").write_text("[vae_jax.plugins]\nideas = ep_ideas\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(plugins, "_installed_loaded", False)
  try:
    settings = vae_jax.parse_config({"model": {"name": "ep_test"}})
    assert settings.model[1]["hidden_dim"] == 8 and settings.plugins == ("ep_ideas",)
  finally:
    models.REGISTRY.entries.pop("ep_test", None)
    sys.modules.pop("ep_ideas", None)
