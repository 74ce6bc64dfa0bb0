"""The run's config in sections, each checked by the code that owns it.

``config.seed``; ``config.data``, ``config.optim``, ``config.run`` become the frozen
dataclasses below (an unknown key or a bad value is one ConfigError naming it);
``config.model``, ``config.prior``, ``config.posterior`` and ``config.objective`` hold
``name`` and the settings given for that entry: their registries (vae_jax.models,
vae_jax.priors, vae_jax.posteriors, vae_jax.objectives) fill the rest from the entry's own
defaults. ``config.plugins``: modules to import before the config is read (where
models and objectives of your own are registered); a run records them, with the modules of
its model and objective, so every later command imports them again. ``parse`` does all of
it once, so a config is refused before anything is read or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeAlias

import ml_collections

from vae_jax import cpu_kernels
from vae_jax.registry import ConfigError, check_type

SOURCES = ("bundled", "idx", "tfds", "encoded")
STRATEGIES = ("auto", "vmap", "map", "loop")
PRECISIONS = ("highest", "high", "default")  # jax.default_matmul_precision
LR_SCHEDULES = ("constant", "staged")
# Keys added after runs were saved without them, at the value those runs had: a saved config
# that lacks one still matches, and a sweep's group hash leaves them out at that value.
ADDED = {
  "optim.lr_schedule": "constant",
  "optim.lr_stage_growth": 3,
  "optim.lr_stage_decay": 10 ** (-1 / 7),
  "model.activation": "relu",
  "model.std_head": "logvar",
  "model.output_bias": "init",
  "run.cpu_kernels": "xla",
  "data.labels_per_class": 0,
  "prior.name": "normal",
  "posterior.name": "gaussian",
}


def _section(cls, config_section, name: str):
  """cls(**section) with unknown keys and wrong types refused, then cls.check()."""
  values = dict(config_section)
  fields = {f.name: f.default for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      raise ConfigError(
        f"config.{name}.{key}: unknown key; config.{name} keys: {', '.join(fields)}"
      )
  out = cls(**{k: check_type(f"config.{name}.{k}", values.get(k, d), d) for k, d in fields.items()})
  out.check()
  return out


def _require(ok: bool, where: str, value: Any, expected: str) -> None:
  if not ok:
    raise ConfigError(f"config.{where}={value!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class Data:
  """Which images: the dataset ``name`` (mnist, fashion_mnist, a TFDS image dataset) from
  ``source``: 'bundled' (MNIST in the package, Fashion-MNIST in the system's copy), 'idx'
  (dir: a directory of IDX files) or 'tfds' (prepared in dir or TFDS's default directory;
  download only when asked; 'encoded': dir is a trained run, whose data become its
  posterior, a draw at each step). *_examples: 0 = the whole split, N = its first N. binarize: a fresh
  Bernoulli(pixel / 255) draw of the inputs at every step (dynamic binarization).
  labels_per_class: for an objective that uses labels (m2), N: the run keeps the labels of N
  training examples per class, drawn with its seed, and the others are unlabelled (0: all)."""

  source: str = "bundled"
  name: str = "mnist"
  dir: str = ""
  download: bool = False
  train_examples: int = 0
  test_examples: int = 0
  binarize: bool = False
  labels_per_class: int = 0

  def check(self):
    _require(self.source in SOURCES, "data.source", self.source, f"one of {', '.join(SOURCES)}")
    _require(
      0 <= self.labels_per_class < 2**31,
      "data.labels_per_class",
      self.labels_per_class,
      "0 (every label) or a count per class",
    )
    for key in ("train_examples", "test_examples"):
      _require(
        0 <= getattr(self, key) < 2**63, f"data.{key}", getattr(self, key), "0 (all) or a count"
      )


@dataclasses.dataclass(frozen=True)
class Optim:
  """Adam and the data order: lr, betas and epsilon as optax.adam; batch 128 and the last
  partial batch kept, as the reference's DataLoader."""

  num_epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 128  # The reference's test loader batch; sums do not depend on it.
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  # 'staged': stage i = 0, 1, ... lasts lr_stage_growth**i epochs at learning_rate *
  # lr_stage_decay**i (Burda et al. 2015: 3**i epochs at 1e-3 * 10**(-i/7)).
  lr_schedule: str = "constant"
  lr_stage_growth: int = 3
  lr_stage_decay: float = 10 ** (-1 / 7)

  def check(self):
    _require(
      self.lr_schedule in LR_SCHEDULES,
      "optim.lr_schedule",
      self.lr_schedule,
      f"one of {', '.join(LR_SCHEDULES)}",
    )
    _require(
      2 <= self.lr_stage_growth < 2**31,
      "optim.lr_stage_growth",
      self.lr_stage_growth,
      "an integer >= 2",
    )
    _require(
      0 < self.lr_stage_decay <= 1, "optim.lr_stage_decay", self.lr_stage_decay, "a value in (0, 1]"
    )
    for key in ("num_epochs", "batch_size", "eval_batch_size"):
      _require(
        1 <= getattr(self, key) < 2**31,
        f"optim.{key}",
        getattr(self, key),
        "an integer in [1, 2**31)",
      )
    _require(
      self.learning_rate > 0 and math.isfinite(self.learning_rate),
      "optim.learning_rate",
      self.learning_rate,
      "a finite value > 0",
    )
    for key in ("b1", "b2"):
      _require(0 <= getattr(self, key) < 1, f"optim.{key}", getattr(self, key), "a value in [0, 1)")
    _require(self.eps > 0 and math.isfinite(self.eps), "optim.eps", self.eps, "a finite value > 0")


@dataclasses.dataclass(frozen=True)
class Run:
  """How the run executes and what it writes; nothing here changes its numbers (num_devices
  and models_strategy only in the last bits). models_strategy: how K > 1 models of a group
  run ('vmap': batched in one program; 'map': one after another inside one program
  (lax.map); 'loop': the single-model program once per model, exactly K single runs; 'auto':
  map on CPU, where batching does not pay and map measured fastest (experiments/benchmark.py),
  vmap elsewhere). progress_chunks: the epoch runs as that many compiled
  chunks; the bar shows each one when the next is already queued, so it never stalls the
  device."""

  # Data parallelism over this many devices. 0 (auto): every device when the batch is given
  # per device or the run spans processes; otherwise as many as keep
  # parallel.MIN_DEVICE_BATCH examples on each (the reference's 128: one device).
  num_devices: int = 0
  # > 0: the batch is this many examples per device of the data axis: optim.batch_size
  # becomes per_device_batch_size x devices (recorded so, and checked on resume). The
  # learning rate is not scaled: set optim.learning_rate for the global batch.
  per_device_batch_size: int = 0
  models_strategy: str = "auto"
  keep_checkpoints: int = 2
  restart: bool = False
  debug_nans: bool = False
  progress: bool = True
  progress_chunks: int = 10
  save_images: bool = True
  tensorboard: bool = True
  # float32 matmuls: 'highest' computes them in float32 everywhere (the reference, the parity
  # tests, evaluation); 'default' lets a GPU use TF32 and a TPU one bfloat16 pass. It changes
  # the numbers on those devices, so a run resumes only with the precision it was saved with.
  matmul_precision: str = "highest"
  # The CPU's matmul kernels (vae_jax/cpu_kernels.py): 'auto', 'xla', 'xnnpack', 'onednn'. A
  # checkpoint records the path 'auto' resolved to; a run resumes only on that path.
  cpu_kernels: str = "auto"
  # A checkpoint after every N-th epoch (0: not by count), and after any epoch that ends S
  # seconds or more after the last one (0: not by time); always after the last epoch and
  # before a stop asked for by a signal. async_checkpoints: written by a background thread
  # while the next epoch trains (a kill loses at most the epochs since the last finished one).
  checkpoint_every_epochs: int = 1
  checkpoint_every_seconds: float = 0.0
  async_checkpoints: bool = False

  def check(self):
    _require(self.num_devices >= 0, "run.num_devices", self.num_devices, "0 (all) or a count")
    _require(
      self.models_strategy in STRATEGIES,
      "run.models_strategy",
      self.models_strategy,
      f"one of {', '.join(STRATEGIES)}",
    )
    _require(
      self.keep_checkpoints >= 1, "run.keep_checkpoints", self.keep_checkpoints, "an integer >= 1"
    )
    _require(
      self.matmul_precision in PRECISIONS,
      "run.matmul_precision",
      self.matmul_precision,
      f"one of {', '.join(PRECISIONS)}",
    )
    _require(
      self.cpu_kernels in cpu_kernels.CHOICES,
      "run.cpu_kernels",
      self.cpu_kernels,
      f"one of {', '.join(cpu_kernels.CHOICES)}",
    )
    _require(
      1 <= self.progress_chunks < 2**31,
      "run.progress_chunks",
      self.progress_chunks,
      "an integer in [1, 2**31)",
    )
    _require(
      0 <= self.num_devices < 2**31, "run.num_devices", self.num_devices, "0 (all) or a count"
    )
    _require(
      self.keep_checkpoints < 2**31,
      "run.keep_checkpoints",
      self.keep_checkpoints,
      "an integer < 2**31",
    )
    _require(
      0 <= self.per_device_batch_size < 2**31,
      "run.per_device_batch_size",
      self.per_device_batch_size,
      "0 (use optim.batch_size) or an integer in [1, 2**31)",
    )
    _require(
      0 <= self.checkpoint_every_epochs < 2**31,
      "run.checkpoint_every_epochs",
      self.checkpoint_every_epochs,
      "0 (not by count) or a number of epochs",
    )
    _require(
      0 <= self.checkpoint_every_seconds < math.inf,
      "run.checkpoint_every_seconds",
      self.checkpoint_every_seconds,
      "0 (not by time) or a finite number of seconds",
    )


# Keys that may change when a run resumes: they do not change its numbers.
RESUMABLE = (
  "optim.num_epochs",
  "data.dir",
  "plugins",
  *(
    f"run.{f.name}"
    for f in dataclasses.fields(Run)
    if f.name not in ("matmul_precision", "cpu_kernels")
  ),
)


@dataclasses.dataclass(frozen=True)
class Settings:
  """A parsed config: every section checked. model / objective: (registry entry, settings);
  plugins: the modules the run imports (recorded); flat: the dotted keys that decide the
  run, as a checkpoint records them (``effective``)."""

  seed: int
  data: Data
  optim: Optim
  run: Run
  model: tuple[Any, dict[str, Any]]
  objective: tuple[Any, dict[str, Any]]
  plugins: tuple[str, ...] = ()
  flat: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
  prior: tuple[Any, dict[str, Any]] | None = None  # None: the default (N(0, I)).
  posterior: tuple[Any, dict[str, Any]] | None = None  # None: the diagonal Gaussian.


# What the public API takes as a config: the CLI's ConfigDict, a dict of the same sections, or
# one parsed Settings (parse once, pass down).
ConfigLike: TypeAlias = ml_collections.ConfigDict | dict[str, Any] | Settings

SECTIONS = ("seed", "plugins", "data", "optim", "run", "model", "prior", "posterior", "objective")
REGISTERED = ("model", "prior", "posterior", "objective")  # Sections chosen by name.


def registries() -> dict[str, Any]:
  """Each REGISTERED section's registry (imported here: config files need not import jax)."""
  from vae_jax import models, objectives, posteriors, priors

  return {
    "model": models.REGISTRY,
    "prior": priors.REGISTRY,
    "posterior": posteriors.REGISTRY,
    "objective": objectives.REGISTRY,
  }


def _plugins(config: dict) -> tuple[str, ...]:
  value = config.get("plugins", ())
  if (
    isinstance(value, str)
    or not isinstance(value, (list, tuple))
    or not all(isinstance(v, str) and v for v in value)
  ):
    raise ConfigError(
      f"config.plugins={value!r}: expected a tuple of module names, e.g. ('my_pkg.ideas',)"
    )
  return tuple(value)


def parse(config: ml_collections.ConfigDict | dict) -> Settings:
  """Checks every section; ConfigError names the first bad key."""
  from vae_jax import models, objectives, plugins  # They import jax; config files need not.

  config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  for key in config:
    if key not in SECTIONS:
      raise ConfigError(f"config.{key}: unknown key; the config's sections: {', '.join(SECTIONS)}")
  seed = check_type("config.seed", config.get("seed", 1), 1)
  _require(0 <= seed < 2**31, "seed", seed, "an integer in [0, 2**31)")
  plugins.load(_plugins(config), "config.plugins")
  chosen = {kind: registry.resolve(config.get(kind, {})) for kind, registry in registries().items()}
  settings = Settings(
    seed,
    _section(Data, config.get("data", {}), "data"),
    _section(Optim, config.get("optim", {}), "optim"),
    _section(Run, config.get("run", {}), "run"),
    chosen["model"],
    chosen["objective"],
    recorded_plugins(config, *(c[0] for c in chosen.values())),
    effective(config),
    chosen["prior"],
    chosen["posterior"],
  )
  model, objective = settings.model[0], settings.objective[0].target
  models.check_latents(model.target, model.name, chosen["prior"][0], chosen["posterior"][0])
  likelihood = settings.objective[1].get("likelihood", "bernoulli")
  if chosen["prior"][0].target.unit_inputs and (
    likelihood == "normal" or settings.data.source == "encoded"
  ):
    raise ConfigError(
      f"config.prior.name={chosen['prior'][0].name!r}: its inputs lie in [0, 1] (pixels); "
      + (
        "config.data.source='encoded' gives real-valued codes"
        if settings.data.source == "encoded"
        else "config.objective.likelihood='normal' models real values"
      )
    )
  objectives.check_model(
    objective,
    settings.objective[1],
    model.name,
    analytic_kl(settings),
    model.target.conditional,
    model.target.latent_choice
    and (settings.posterior is None or settings.posterior[0].target.density),
  )
  if settings.data.labels_per_class and not objective.uses_labels:
    raise ConfigError(
      f"config.data.labels_per_class={settings.data.labels_per_class}: keeps some labels "
      f"for an objective that learns from the rest unlabelled (m2); objective "
      f"{objective.name!r} trains on every label or none (set it to 0)"
    )
  return settings


def analytic_kl(settings: Settings) -> bool:
  """Whether the run's KL is the diagonal Gaussian's to N(0, I) in closed form (VAE.analytic_kl)."""
  model, prior, posterior = (
    settings.model[0].target,
    settings.prior[0].target if settings.prior else None,
    settings.posterior[0].target if settings.posterior else None,
  )
  return bool(
    model.gaussian_kl
    and (prior is None or prior.standard)
    and (posterior is None or posterior.gaussian)
  )


def shared_test_metric(settings: Settings) -> bool:
  """Whether the run's test metric is its objective's ``evaluate_with`` (the ELBO), shared by
  runs of any prior and posterior: all but a model with latents of its own and no
  closed-form KL (hvae2, the Hamiltonian VAE), evaluated with its training objective."""
  return analytic_kl(settings) or settings.model[0].target.latent_choice


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'optim.batch_size': 128, ...}: the dotted keys of a nested config dict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def recorded_plugins(config: dict, *entries) -> tuple[str, ...]:
  """config.plugins and the modules that define the entries (outside vae_jax), in order."""
  names = [*_plugins(config), *(e.module for e in entries if e.module)]
  return tuple(n for n in dict.fromkeys(names) if n != "vae_jax" and not n.startswith("vae_jax."))


def effective(config) -> dict[str, Any]:
  """The dotted keys that decide a run, as a checkpoint records them: every section, of
  each REGISTERED section the name and every setting of the chosen entry (the given value,
  else the entry's default: another entry's defaults may change without touching this run),
  and ``plugins`` (config.plugins and the modules of the chosen entries). Values stay as
  given (a sweep's group hash is computed from them)."""
  if not isinstance(config, ml_collections.ConfigDict) and any("." in k for k in config):
    config = from_flat(config)  # Dotted keys, as a checkpoint saved them.
  config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  flat = flatten({k: v for k, v in config.items() if k not in (*REGISTERED, "plugins")})
  used = []
  for kind, registry in registries().items():
    section = dict(config.get(kind, {}))
    name = section.get("name", registry.default)
    entry = registry.entries.get(name)
    settings = (
      entry.settings if entry is not None else {k: v for k, v in section.items() if k != "name"}
    )
    used += [entry] if entry is not None else []
    flat[f"{kind}.name"] = name
    flat.update(flatten({k: section.get(k, d) for k, d in settings.items()}, f"{kind}."))
  flat["plugins"] = list(recorded_plugins(config, *used))
  return flat


def with_kernels(flat: dict[str, Any]) -> dict[str, Any]:
  """The dotted keys with run.cpu_kernels as the path it resolves to here ('auto' -> 'xla'...):
  what a checkpoint records and a resume or a sweep group compares."""
  if "run.cpu_kernels" not in flat:
    return flat
  return {**flat, "run.cpu_kernels": cpu_kernels.resolve(flat["run.cpu_kernels"])[0]}


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'key: saved -> current' for each dotted key that differs and changes the numbers."""
  current = with_kernels(flatten(current))  # 'auto' kernels compare as the path they resolve to.
  saved = with_kernels({**{k: v for k, v in ADDED.items() if k in current}, **flatten(saved)})
  missing = object()
  keys = sorted((saved.keys() | current.keys()) - set(RESUMABLE))
  return [
    f"{k}: {saved.get(k, missing)!r} -> {current.get(k, missing)!r}".replace(
      repr(missing), "(absent)"
    )
    for k in keys
    if saved.get(k, missing) != current.get(k, missing)
  ]


def default_sections(
  model: str | None = None, objective: str | None = None
) -> ml_collections.ConfigDict:
  """seed and every section at its defaults; each REGISTERED section holds the entry's name
  only (model / objective: another entry than mlp / elbo); ``parse`` fills their settings
  from that entry's defaults (``filled`` shows them)."""
  from vae_jax import models, objectives, posteriors, priors

  return ml_collections.ConfigDict(
    {
      "seed": 1,
      "plugins": (),
      "data": dataclasses.asdict(Data()),
      "optim": dataclasses.asdict(Optim()),
      "run": dataclasses.asdict(Run()),
      "model": {"name": models.REGISTRY.get(model or models.REGISTRY.default).name},
      "prior": {"name": priors.REGISTRY.default},
      "posterior": {"name": posteriors.REGISTRY.default},
      "objective": {"name": objectives.REGISTRY.get(objective or objectives.REGISTRY.default).name},
    }
  )


def filled(config) -> ml_collections.ConfigDict:
  """The config with the chosen model's and objective's settings written out (config.json)."""
  return from_flat(effective(config))


def from_flat(flat: dict[str, Any]) -> ml_collections.ConfigDict:
  """The default config with dotted keys set (as saved in config.json or a checkpoint).

  Keys of the REGISTERED sections are kept as given: ``parse`` checks them against the
  chosen entry."""
  config = default_sections()
  for key, value in flat.items():
    section, _, name = key.rpartition(".")
    if section in REGISTERED:
      config[section][name] = tuple(value) if isinstance(value, list) else value
      continue
    target = config[section] if section in config and section else config
    if name in target and isinstance(target[name], tuple) and isinstance(value, list):
      value = tuple(value)
    if name not in target or (section and section not in config):
      raise ConfigError(f"config.{key}: unknown key (saved by another version of vae_jax?)")
    try:
      target[name] = value
    except (TypeError, ValueError):
      raise ConfigError(
        f"config.{key}={value!r}: expected a {type(target[name]).__name__}"
      ) from None
  return config


def known_keys() -> list[str]:
  """Every dotted config key: the sections' and every registered entry's settings."""
  keys = [k for k in flatten(default_sections())]
  for kind, registry in registries().items():
    keys += [f"{kind}.{k}" for k in registry.keys()]
  return sorted(set(keys))
