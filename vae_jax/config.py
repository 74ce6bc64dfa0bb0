"""The run's config in sections, each checked by the code that owns it.

``config.seed``; ``config.data``, ``config.optim``, ``config.run`` become the frozen
dataclasses below (an unknown key or a bad value is one ConfigError naming it);
``config.model`` and ``config.objective`` are resolved by their registries (vae_jax.models,
vae_jax.objectives), whose entries declare their own settings. ``parse`` does all of it, so
a config is refused before anything is read or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from vae_jax import cpu_kernels
from vae_jax.registry import ConfigError, check_type

SOURCES = ("bundled", "idx", "tfds")
STRATEGIES = ("auto", "vmap", "map", "loop")
PRECISIONS = ("highest", "high", "default")  # jax.default_matmul_precision
LR_SCHEDULES = ("constant", "staged")
# Keys added after runs were saved without them, at the value those runs had: a saved config
# that lacks one still matches, and a sweep's group hash leaves them out at that value.
ADDED = {"optim.lr_schedule": "constant", "optim.lr_stage_growth": 3,
         "optim.lr_stage_decay": 10 ** (-1 / 7), "model.activation": "relu",
         "model.std_head": "logvar", "model.output_bias": "init", "run.cpu_kernels": "xla"}


def _section(cls, config_section, name: str):
  """cls(**section) with unknown keys and wrong types refused, then cls.check()."""
  values = dict(config_section)
  fields = {f.name: f.default for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      raise ConfigError(f"config.{name}.{key}: unknown key; config.{name} keys: {', '.join(fields)}")
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
  download only when asked). *_examples: 0 = the whole split, N = its first N. binarize:
  a fresh Bernoulli(pixel / 255) draw of the inputs at every step (dynamic binarization)."""
  source: str = "bundled"
  name: str = "mnist"
  dir: str = ""
  download: bool = False
  train_examples: int = 0
  test_examples: int = 0
  binarize: bool = False

  def check(self):
    _require(self.source in SOURCES, "data.source", self.source, f"one of {', '.join(SOURCES)}")
    for key in ("train_examples", "test_examples"):
      _require(0 <= getattr(self, key) < 2**63, f"data.{key}", getattr(self, key), "0 (all) or a count")


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
    _require(self.lr_schedule in LR_SCHEDULES, "optim.lr_schedule", self.lr_schedule,
             f"one of {', '.join(LR_SCHEDULES)}")
    _require(2 <= self.lr_stage_growth < 2**31, "optim.lr_stage_growth", self.lr_stage_growth,
             "an integer >= 2")
    _require(0 < self.lr_stage_decay <= 1, "optim.lr_stage_decay", self.lr_stage_decay,
             "a value in (0, 1]")
    for key in ("num_epochs", "batch_size", "eval_batch_size"):
      _require(1 <= getattr(self, key) < 2**31, f"optim.{key}", getattr(self, key),
               "an integer in [1, 2**31)")
    _require(self.learning_rate > 0 and math.isfinite(self.learning_rate), "optim.learning_rate",
             self.learning_rate, "a finite value > 0")
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
    _require(self.models_strategy in STRATEGIES, "run.models_strategy", self.models_strategy,
             f"one of {', '.join(STRATEGIES)}")
    _require(self.keep_checkpoints >= 1, "run.keep_checkpoints", self.keep_checkpoints,
             "an integer >= 1")
    _require(self.matmul_precision in PRECISIONS, "run.matmul_precision", self.matmul_precision,
             f"one of {', '.join(PRECISIONS)}")
    _require(self.cpu_kernels in cpu_kernels.CHOICES, "run.cpu_kernels", self.cpu_kernels,
             f"one of {', '.join(cpu_kernels.CHOICES)}")
    _require(1 <= self.progress_chunks < 2**31, "run.progress_chunks", self.progress_chunks,
             "an integer in [1, 2**31)")
    _require(0 <= self.num_devices < 2**31, "run.num_devices", self.num_devices, "0 (all) or a count")
    _require(self.keep_checkpoints < 2**31, "run.keep_checkpoints", self.keep_checkpoints,
             "an integer < 2**31")
    _require(0 <= self.per_device_batch_size < 2**31, "run.per_device_batch_size",
             self.per_device_batch_size, "0 (use optim.batch_size) or an integer in [1, 2**31)")
    _require(0 <= self.checkpoint_every_epochs < 2**31, "run.checkpoint_every_epochs",
             self.checkpoint_every_epochs, "0 (not by count) or a number of epochs")
    _require(0 <= self.checkpoint_every_seconds < math.inf, "run.checkpoint_every_seconds",
             self.checkpoint_every_seconds, "0 (not by time) or a finite number of seconds")


# Keys that may change when a run resumes: they do not change its numbers.
RESUMABLE = ("optim.num_epochs", "data.dir",
             *(f"run.{f.name}" for f in dataclasses.fields(Run)
               if f.name not in ("matmul_precision", "cpu_kernels")))


@dataclasses.dataclass(frozen=True)
class Settings:
  """A parsed config: every section checked. model / objective: (registry entry, settings)."""
  seed: int
  data: Data
  optim: Optim
  run: Run
  model: tuple[Any, dict[str, Any]]
  objective: tuple[Any, dict[str, Any]]


def parse(config: ml_collections.ConfigDict | dict) -> Settings:
  """Checks every section; ConfigError names the first bad key."""
  from vae_jax import models, objectives  # They import jax; config files need not.
  config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  known = ("seed", "data", "optim", "run", "model", "objective")
  for key in config:
    if key not in known:
      raise ConfigError(f"config.{key}: unknown key; the config's sections: {', '.join(known)}")
  seed = check_type("config.seed", config.get("seed", 1), 1)
  _require(0 <= seed < 2**31, "seed", seed, "an integer in [0, 2**31)")
  settings = Settings(seed, _section(Data, config.get("data", {}), "data"),
                      _section(Optim, config.get("optim", {}), "optim"),
                      _section(Run, config.get("run", {}), "run"),
                      models.REGISTRY.resolve(config.get("model", {})),
                      objectives.REGISTRY.resolve(config.get("objective", {})))
  model = settings.model[0]
  objectives.check_model(settings.objective[0].target, model.name, model.target.standard_prior)
  return settings


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


def effective(config) -> dict[str, Any]:
  """The dotted keys that decide a run: every section, but of config.model and
  config.objective only the name and the chosen entry's settings (the other entries'
  defaults may change without touching this run)."""
  from vae_jax import models, objectives
  flat = flatten(config)
  for kind, registry in (("model", models.REGISTRY), ("objective", objectives.REGISTRY)):
    name = flat.get(f"{kind}.name", registry.default)
    used = registry.entries[name].settings if name in registry.entries else {}
    flat = {k: v for k, v in flat.items()
            if not k.startswith(f"{kind}.") or k == f"{kind}.name" or k.split(".", 1)[1] in used}
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
  return [f"{k}: {saved.get(k, missing)!r} -> {current.get(k, missing)!r}".replace(
      repr(missing), "(absent)") for k in keys if saved.get(k, missing) != current.get(k, missing)]


def default_sections() -> ml_collections.ConfigDict:
  """seed and every section at its defaults: the registries' union for model and objective."""
  from vae_jax import models, objectives
  return ml_collections.ConfigDict({
      "seed": 1,
      "data": dataclasses.asdict(Data()), "optim": dataclasses.asdict(Optim()),
      "run": dataclasses.asdict(Run()),
      "model": models.REGISTRY.section(), "objective": objectives.REGISTRY.section()})


def from_flat(flat: dict[str, Any]) -> ml_collections.ConfigDict:
  """The default config with dotted keys set (as saved in config.json or a checkpoint)."""
  config = default_sections()
  for key, value in flat.items():
    section, _, name = key.rpartition(".")
    target = config[section] if section else config
    if name in target and isinstance(target[name], tuple) and isinstance(value, list):
      value = tuple(value)
    if name not in target:
      raise ConfigError(f"config.{key}: unknown key (saved by another version of vae_jax?)")
    try:
      target[name] = value
    except (TypeError, ValueError):
      raise ConfigError(f"config.{key}={value!r}: expected a {type(target[name]).__name__}") from None
  return config
