"""vae-jax: the classic MNIST VAE, reproduced exactly in JAX/Flax, as a research library.

The public API (imported on first use, so ``import vae_jax`` stays light; every name keeps
its meaning for the life of the process, whatever else is imported):

  config = vae_jax.get_config()                   # the reference, in sections
  config = vae_jax.get_config(model="conv", objective="iwae")  # other entries, their defaults
  state, records = vae_jax.train(config, "runs/x")  # one model; resumes a killed run
  states, records = vae_jax.train_models(config, splits, [{"seed": 1}, {"seed": 2}], ckpt, dirs)
  config, state, keys, meta = vae_jax.load_run("runs/x", "best")
  run = vae_jax.open_run("runs/x")                 # .config .settings .state .keys .meta
  mu, logvar = vae_jax.encode(state, x_NxHxWxC)   # posterior means and log-variances (a flow, vMF: codes, None)
  images = vae_jax.decode(state, z_NxL)           # mean images in [0, 1]
  images = vae_jax.sample(state, 64, jax.random.key(0))
  images = vae_jax.sample(state, 8, jax.random.key(0), labels=3)   # a conditional model's
  probs = vae_jax.classify(state, x_NxHxWxC)      # q(y|x) of a model with a classifier (m2)
  est = vae_jax.log_likelihood(state, x_binary, jax.random.key(0), num_samples=5000)
  vae_jax.run_study(vae_jax.make_study(...), "runs/study")
  module = vae_jax.build_model(config, (28, 28, 1))           # no run, no data
  state, keys = vae_jax.create_state(config, (28, 28, 1))     # the state a run starts from

Extension points: ``@vae_jax.register_model("name")`` on a ``vae_jax.VAE`` subclass (its
fields become its config.model settings, with its own defaults); ``@vae_jax.register_objective
("name", Hparams)`` on a function ``(params, apply_fn, x, key, hparams) -> (loss, metrics)``
whose Hparams (a ``vae_jax.Hparams`` flax.struct dataclass; ``vae_jax.static`` for settings
that shape the program; the run fills the RUN_CONTEXT fields) become its config.objective
settings; ``@vae_jax.register_prior("name")`` on a ``vae_jax.Prior`` subclass (config.prior:
``log_prob(z, encode)``, ``sample(key, num, encode)``) and ``@vae_jax.register_posterior
("name")`` on a ``vae_jax.Posterior`` subclass (config.posterior: ``__call__(mu, logvar, h,
key, K) -> (z, log q)``; a flow subclasses ``vae_jax.Flow`` with ``transform``); the built-in
networks to build on: ``vae_jax.MLP``, ``vae_jax.Conv``. Building blocks: ``reparameterize``, ``kl_per_example``, ``nll_per_example``,
``bce_per_example``, ``gaussian_log_density``, ``nll_fn`` (the Hparams' likelihood),
``ConfigError`` (a bad setting, shown as one line). A run records the modules that define
its model and objective (``config.plugins``, ``--plugin=MODULE``), so it reopens in a fresh
process. See experiments/custom_objective.py and tests/test_plugins.py.
"""

import importlib

__version__ = "0.2.0"

_API = {
  "get_config": ("vae_jax.config", "default_sections"),
  "parse_config": ("vae_jax.config", "parse"),
  "train": ("vae_jax.training", "train_and_evaluate"),
  "train_models": ("vae_jax.training", "train_models"),
  "load_run": ("vae_jax.runs", "restore_run"),
  "open_run": ("vae_jax.runs", "open_run"),
  "create_state": ("vae_jax.runs", "create_state"),
  "build_model": ("vae_jax.models", "build_model"),
  "reparameterize": ("vae_jax.models", "reparameterize"),
  "kl_per_example": ("vae_jax.losses", "kl_per_example"),
  "nll_per_example": ("vae_jax.losses", "nll_per_example"),
  "bce_per_example": ("vae_jax.losses", "bce_per_example"),
  "gaussian_log_density": ("vae_jax.losses", "gaussian_log_density"),
  "nll_fn": ("vae_jax.objectives", "nll_fn"),
  "RUN_CONTEXT": ("vae_jax.objectives", "CONTEXT"),
  "ConfigError": ("vae_jax.registry", "ConfigError"),
  "load_data": ("vae_jax.data", "load_data"),
  "encode": ("vae_jax.api", "encode"),
  "decode": ("vae_jax.api", "decode"),
  "sample": ("vae_jax.api", "sample"),
  "classify": ("vae_jax.api", "classify"),
  "log_likelihood": ("vae_jax.api", "log_likelihood"),
  "make_study": ("vae_jax.sweep", "make_study"),
  "run_study": ("vae_jax.sweep", "run_study"),
  "register_model": ("vae_jax.models", "register_model"),
  "VAE": ("vae_jax.models", "VAE"),
  "ConditionalVAE": ("vae_jax.models.conditional", "ConditionalVAE"),
  "MLP": ("vae_jax.models.mlp", "MLP"),
  "Conv": ("vae_jax.models.conv", "Conv"),
  "register_prior": ("vae_jax.priors", "register_prior"),
  "Prior": ("vae_jax.priors", "Prior"),
  "register_posterior": ("vae_jax.posteriors", "register_posterior"),
  "Posterior": ("vae_jax.posteriors", "Posterior"),
  "Flow": ("vae_jax.posteriors.gaussian", "Flow"),
  "register_objective": ("vae_jax.objectives", "register_objective"),
  "Hparams": ("vae_jax.objectives", "Hparams"),
  "Likelihood": ("vae_jax.objectives", "Likelihood"),
  "static": ("vae_jax.objectives", "static"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
  module, attribute = _API[name]
  return getattr(importlib.import_module(module), attribute)


def __dir__():
  return sorted([*globals(), *_API])
