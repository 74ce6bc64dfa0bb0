"""The public API holds: every name in vae_jax.__all__ is documented and keeps its meaning
(the same object, the same behaviour) whatever else the process imports."""

import importlib
import pkgutil

import jax
import numpy as np
from flax import struct

import vae_jax


def _use_every_name(tmp_path, small_splits, trained_run):
  """Calls every API name once; returns what each gave (to compare two rounds)."""
  x_u8 = small_splits["test"][0][:4]
  x = x_u8.astype(np.float32) / 255
  config = vae_jax.get_config()
  config.optim.num_epochs, config.run.progress, config.run.save_images = 1, False, False
  config.run.tensorboard = False
  from vae_jax import models, objectives, posteriors, priors

  out = {}
  out["get_config"] = vae_jax.get_config(model="conv").model.name
  out["parse_config"] = vae_jax.parse_config(config).model[0].name
  state, records = vae_jax.train(config, tmp_path / "run", small_splits)
  out["train"] = records[-1]["test_loss"]
  states, model_records = vae_jax.train_models(
    config, small_splits, [{"seed": 1}], tmp_path / "group", [None], log=lambda _: None
  )
  out["train_models"] = [r[-1]["test_loss"] for r in model_records]
  saved_config, state, keys, meta = vae_jax.load_run(trained_run)
  out["load_run"] = meta["epoch"]
  out["open_run"] = vae_jax.open_run(trained_run).meta["epoch"]
  out["load_data"] = len(vae_jax.load_data(vae_jax.parse_config(saved_config).data)["test"][0])
  mu, logvar = vae_jax.encode(state, x)
  out["encode"] = mu.tolist()
  out["decode"] = vae_jax.decode(state, mu).sum()
  out["sample"] = vae_jax.sample(state, 2, jax.random.key(0)).sum()
  out["log_likelihood"] = vae_jax.log_likelihood(state, np.round(x), jax.random.key(0), 3)[
    "iwae"
  ].tolist()
  study = vae_jax.make_study(
    "api",
    "",
    {"objective.beta": [1.0]},
    1,
    {"optim.num_epochs": 1, "run.save_images": False, "run.tensorboard": False},
  )
  out["make_study"] = study.name
  out["run_study"] = vae_jax.run_study(study, tmp_path / "study", small_splits, log=lambda _: None)
  module = vae_jax.build_model(config, (28, 28, 1))
  out["build_model"] = type(module).__name__
  fresh, fresh_keys = vae_jax.create_state(config, (28, 28, 1), num_train_examples=300)
  out["create_state"] = (int(fresh.step), sorted(fresh_keys))
  out["VAE"] = isinstance(module, vae_jax.VAE)
  out["MLP"] = isinstance(module, vae_jax.MLP)
  out["Conv"] = isinstance(vae_jax.build_model(vae_jax.get_config(model="conv")), vae_jax.Conv)
  out["Prior"] = issubclass(priors.REGISTRY.get("vamp").target, vae_jax.Prior)
  out["Posterior"] = issubclass(posteriors.REGISTRY.get("vmf").target, vae_jax.Posterior)
  out["Flow"] = issubclass(posteriors.REGISTRY.get("planar").target, vae_jax.Flow)
  conditional = vae_jax.build_model(vae_jax.get_config(model="cmlp"), (28, 28, 1))
  out["ConditionalVAE"] = isinstance(conditional, vae_jax.ConditionalVAE)
  m2 = vae_jax.get_config(model="cmlp", objective="m2")
  m2.model.classifier_hidden = 8
  m2_state, _ = vae_jax.create_state(m2, (28, 28, 1), num_train_examples=300)
  out["classify"] = vae_jax.classify(m2_state, x).round(5).tolist()
  eps = np.ones((4, 20), np.float32)
  out["reparameterize"] = np.asarray(vae_jax.reparameterize(mu, logvar, eps)).tolist()
  out["kl_per_example"] = np.asarray(vae_jax.kl_per_example(mu, logvar)).tolist()
  logits = np.zeros_like(x)
  out["nll_per_example"] = np.asarray(vae_jax.nll_per_example(logits, x)).tolist()
  out["bce_per_example"] = np.asarray(vae_jax.bce_per_example(logits, x)).tolist()
  out["gaussian_log_density"] = np.asarray(vae_jax.gaussian_log_density(mu, 0.0, 0.0)).tolist()
  out["nll_fn"] = np.asarray(vae_jax.nll_fn({}, vae_jax.Likelihood())(logits, x)).tolist()
  out["Likelihood"] = vae_jax.Likelihood().likelihood
  out["RUN_CONTEXT"] = tuple(vae_jax.RUN_CONTEXT)
  out["ConfigError"] = issubclass(vae_jax.ConfigError, ValueError)

  @struct.dataclass
  class ApiHparams(vae_jax.Hparams):
    weight: float = 2.0
    mode: str = vae_jax.static("a")

  out["Hparams"] = out["static"] = (ApiHparams().weight, ApiHparams().mode)
  from vae_jax.models.mlp import MLP

  try:
    vae_jax.register_objective("api_test", ApiHparams)(lambda p, a, x, k, h: (0.0, {"loss": 0.0}))
    vae_jax.register_model("api_test")(type("ApiVAE", (MLP,), {"__module__": __name__}))
    out["register_objective"] = objectives.REGISTRY.get("api_test").settings
    out["register_model"] = models.REGISTRY.get("api_test").settings["hidden_dim"]
    vae_jax.register_prior("api_test")(
      type("ApiPrior", (priors.REGISTRY.get("mog").target,), {"__module__": __name__})
    )
    out["register_prior"] = priors.REGISTRY.get("api_test").settings["num_components"]
    vae_jax.register_posterior("api_test")(
      type("ApiPosterior", (posteriors.REGISTRY.get("planar").target,), {"__module__": __name__})
    )
    out["register_posterior"] = posteriors.REGISTRY.get("api_test").settings["length"]
  finally:
    for registry in (objectives.REGISTRY, models.REGISTRY, priors.REGISTRY, posteriors.REGISTRY):
      registry.entries.pop("api_test", None)
  return out


def test_every_api_name_keeps_its_meaning_around_imports_of_every_submodule(
  tmp_path, small_splits, trained_run
):
  first = {name: getattr(vae_jax, name) for name in vae_jax.__all__}
  for name, value in first.items():
    assert (getattr(value, "__doc__", None) or "").strip() or name == "RUN_CONTEXT", (
      f"{name}: no docstring"
    )
  used = _use_every_name(tmp_path, small_splits, trained_run)
  assert set(used) == set(vae_jax.__all__)  # Every name was called.
  submodules = [m.name for m in pkgutil.walk_packages(vae_jax.__path__, "vae_jax.")]
  assert {"vae_jax.training", "vae_jax.evaluate", "vae_jax.models.conv"} <= set(submodules)
  for name in submodules:
    importlib.import_module(name)
  assert not set(vae_jax.__all__) & {m.rsplit(".", 1)[-1] for m in submodules}  # No shadowing.
  for name, value in first.items():
    assert getattr(vae_jax, name) is value, f"vae_jax.{name} changed meaning after the imports"
  again = _use_every_name(tmp_path, small_splits, trained_run)  # Resumed: the same results.
  assert again == used


def test_no_api_name_is_a_submodule_of_the_package():
  names = {m.name.rsplit(".", 1)[-1] for m in pkgutil.iter_modules(vae_jax.__path__)}
  assert not names & set(vae_jax.__all__)


def test_evaluation_and_inference_do_not_import_the_training_loop():
  import subprocess
  import sys

  code = (
    "import sys, vae_jax.evaluate, vae_jax.inference, vae_jax.runs; "
    "print(sorted(m for m in ('vae_jax.training', 'vae_jax.epoch', 'vae_jax.sweep') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_every_api_function_is_annotated_and_the_package_says_it_is_typed():
  """PEP 561: py.typed ships with the package (pyproject's package data), and every public
  function says what it takes and gives, so a user's type checker can hold them to it."""
  import inspect
  import pathlib
  import tomllib

  root = pathlib.Path(vae_jax.__file__).parent
  assert (root / "py.typed").is_file()
  package_data = tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
  assert "py.typed" in package_data["package-data"]["vae_jax"]
  unannotated = []
  for name in vae_jax.__all__:
    value = getattr(vae_jax, name)
    if not inspect.isfunction(value):
      continue
    signature = inspect.signature(value)
    loose = [
      p.name
      for p in signature.parameters.values()
      if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if loose or signature.return_annotation is inspect.Signature.empty:
      unannotated.append(f"{name}({', '.join(loose)})")
  assert not unannotated
