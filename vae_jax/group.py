"""K >= 1 models that share one compiled program: their settings, states and epoch.

A single run is K = 1. Models of a group share the config except the settings that are
traced as arrays: ``seed``, ``optim.learning_rate`` (held in the optimizer state) and the
objective's numeric settings (its Hparams fields that are not static). Everything else
shapes the program: another value is another group.

Randomness: ``rng = key(seed)`` is split once into ``init`` and the named run keys
(KEY_NAMES); per step ``fold_in(noise, step)``, per epoch ``fold_in(shuffle, epoch)``,
evaluation ``fold_in(eval, epoch)``, images ``fold_in(images, epoch)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import config as config_lib, models, objectives, parallel, step as step_lib
from vae_jax.registry import ConfigError

KEY_NAMES = ("shuffle", "noise", "eval", "images")  # The run's keys after rng_init.


def batched_settings(objective: objectives.Objective) -> tuple[str, ...]:
  """Dotted config keys that may differ between the models of one group."""
  return (
    "seed",
    "optim.learning_rate",
    *(f"objective.{k}" for k in objectives.dynamic_settings(objective)),
  )


def _stack(trees: list) -> Any:
  """Leaves stacked on a new axis 0: floats as float32, ints as int32 (the traced types)."""

  def leaf(*xs):
    a = np.asarray(xs)
    return a.astype(
      np.float32 if a.dtype.kind == "f" else np.int32 if a.dtype.kind in "iu" else a.dtype
    )

  return jax.tree.map(leaf, *trees)


@dataclasses.dataclass
class Group:
  """Everything the loop needs about K models, derived once from the config and the data."""

  settings: config_lib.Settings
  overrides: list[dict[str, Any]]
  model: models.VAE
  objective: objectives.Objective
  hparams: Any  # K-stacked Hparams.
  eval_objective: objectives.Objective
  eval_hparams: Any
  seeds: np.ndarray
  learning_rates: np.ndarray
  image_shape: tuple[int, ...]
  num_train: int
  mean_image: np.ndarray  # The training set's mean pixel in [0, 1] (data-dependent inits).
  mesh: Any = None  # The data-parallel mesh of a single run (None: one device, or K > 1).

  @property
  def num_models(self) -> int:
    return len(self.overrides)

  @property
  def steps_per_epoch(self) -> int:
    return -(-self.num_train // self.settings.optim.batch_size)

  def strategy(self) -> str:
    """How K > 1 models run (run.models_strategy; 'auto': map on CPU, vmap elsewhere)."""
    chosen = self.settings.run.models_strategy
    return ("map" if jax.default_backend() == "cpu" else "vmap") if chosen == "auto" else chosen

  def describe(self, k: int) -> str:
    return ", ".join(f"{key}={value}" for key, value in self.overrides[k].items()) or "the config"


def as_settings(config) -> config_lib.Settings:
  """A parsed config: config itself when it is one (parse once, pass down), else parsed."""
  return config if isinstance(config, config_lib.Settings) else config_lib.parse(config)


def make_group(config, splits, overrides: list[dict[str, Any]] | None = None) -> Group:
  """The group for a config (ConfigDict or parsed Settings), its data and per-model
  overrides ([{}] : one model), with the devices it will use: every check that needs the
  data, before anything is written."""
  settings = as_settings(config)
  x_train, x_test = splits["train"][0], splits["test"][0]
  for name, x in (("train", x_train), ("test", x_test)):
    if len(x) == 0:
      raise ConfigError(f"data: the {name} split has no images")
  if settings.optim.batch_size > len(x_train):
    raise ConfigError(
      f"config.optim.batch_size={settings.optim.batch_size}: larger than the "
      f"training set ({len(x_train)} examples)"
    )
  if settings.model[0].target.conditional:
    check_labels(settings, splits)
  if np.issubdtype(x_train.dtype, np.floating):  # An encoded posterior: real-valued codes.
    likelihood = settings.objective[1].get("likelihood")
    if settings.data.binarize or likelihood != "normal":
      raise ConfigError(
        "data: an encoded run's latent codes are real values; train on them with "
        "config.objective.likelihood='normal' and config.data.binarize=False (here "
        f"{likelihood!r}, binarize={settings.data.binarize})"
      )
  features = np.issubdtype(x_train.dtype, np.floating)  # An encoded posterior: its mean.
  group = build_group(
    settings,
    step_lib.model_shape(x_train.shape[1:], x_train.dtype),
    len(x_train),
    cast(
      np.ndarray, np.mean(x_train[..., :1] if features else x_train, axis=0, dtype=np.float64)
    ).astype(np.float32)
    / (1 if features else 255),
    overrides,
    int(x_train.nbytes) + int(x_test.nbytes),
  )
  group.mesh = check_devices(settings, group.num_models)
  return group


def build_group(
  settings: config_lib.Settings,
  image_shape: tuple[int, ...],
  num_train: int,
  mean_image: np.ndarray | None = None,
  overrides: list[dict[str, Any]] | None = None,
  data_bytes: int = 0,
) -> Group:
  """The group from the data's shape alone (no images: what restoring a checkpoint needs).

  mean_image: the training set's mean pixel (None: 0.5 everywhere; only data-dependent inits
  read it, and a restored state replaces what they set)."""
  overrides = [dict(o) for o in (overrides or [{}])]
  entry, obj_settings = settings.objective
  allowed = batched_settings(entry.target)
  for o in overrides:
    for key in o:
      if key not in allowed:
        raise ConfigError(
          f"per-model setting {key!r}: models trained in one program may differ "
          f"only in {', '.join(allowed)}; other settings need a group of their own"
        )
  context = run_context(settings, num_train)
  hparams, eval_hparams = [], []
  for o in overrides:
    mine = (
      entry,
      {
        **obj_settings,
        **{k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("objective.")},
      },
    )
    hparams.append(objectives.make_hparams(mine, **context))
    eval_objective, eval_hp = objectives.evaluation(
      mine, config_lib.shared_test_metric(settings), **context
    )
    eval_hparams.append(eval_hp)
  image_shape = tuple(image_shape)
  model = models.build(settings.model, image_shape, hparams[0], settings.prior, settings.posterior)
  steps = settings.optim.num_epochs * context["steps_per_epoch"]
  if steps >= 2**31:
    raise ConfigError(
      f"config.optim.num_epochs={settings.optim.num_epochs}: {steps:,} steps "
      "overflow the int32 step counter (at most 2**31 - 1)"
    )
  parallel.check_fits(
    estimated_bytes(model, len(overrides), settings.optim, data_bytes),
    f"the run ({len(overrides)} model(s) of {settings.model[0].name!r})",
  )
  check_objective(entry.target, model, hparams[0])
  if mean_image is None:
    mean_image = np.full(image_shape, 0.5, np.float32)
  return Group(
    settings,
    overrides,
    model,
    entry.target,
    _stack(hparams),
    eval_objective,
    _stack(eval_hparams),
    np.asarray([o.get("seed", settings.seed) for o in overrides], np.int32),
    np.asarray(
      [o.get("optim.learning_rate", settings.optim.learning_rate) for o in overrides], np.float32
    ),
    image_shape,
    num_train,
    mean_image,
  )


def check_labels(settings: config_lib.Settings, splits) -> None:
  """Refuses, naming the split, labels a conditional model cannot take: none (a dataset
  without labels has -1), a class outside [0, num_classes), or fewer examples of a class
  than data.labels_per_class keeps."""
  model, num_classes = settings.model[0].name, settings.model[1]["num_classes"]
  for split, (_, labels) in splits.items():
    if len(labels) and labels.min() < 0:
      raise ConfigError(
        f"data: the {split} split has no labels (or some are missing); model {model!r} is "
        "conditional and needs the label of every image"
      )
    if len(labels) and labels.max() >= num_classes:
      raise ConfigError(
        f"data: the {split} split has labels up to {labels.max()}; model {model!r} has "
        f"config.model.num_classes={num_classes} (classes 0 to {num_classes - 1})"
      )
  per_class = settings.data.labels_per_class
  counts = np.bincount(splits["train"][1], minlength=num_classes)
  if per_class and counts.min() < per_class:
    raise ConfigError(
      f"config.data.labels_per_class={per_class}: class {int(counts.argmin())} has "
      f"{int(counts.min())} training examples"
    )


def run_context(settings: config_lib.Settings, num_train: int) -> dict[str, int]:
  """What a run fills into an objective's Hparams (objectives.CONTEXT): num_train_examples
  (the training split's size), steps_per_epoch (ceil(num_train / optim.batch_size)) and
  num_labelled_examples (data.labels_per_class x the model's classes, or num_train)."""
  per_class = settings.data.labels_per_class
  num_classes = settings.model[1].get("num_classes", 0)
  return dict(
    num_train_examples=num_train,
    steps_per_epoch=-(-num_train // settings.optim.batch_size),
    num_labelled_examples=min(num_train, per_class * num_classes) if per_class else num_train,
  )


def check_objective(objective: objectives.Objective, model: models.VAE, hparams) -> None:
  """Traces the objective once on one example (nothing runs): a bad metrics dict is one
  ConfigError naming the objective before the run writes anything."""
  x_1 = jnp.zeros((1, *model.image_shape), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x_1))["params"]
  labels = (jnp.zeros((1,), jnp.int32),) if model.conditional else ()
  fn = objectives.with_labels(objective, model.conditional)
  jax.eval_shape(
    lambda p, k: fn(p, model.apply, x_1, k, hparams, *labels), params, jax.random.key(0)
  )


def check_devices(settings: config_lib.Settings, num_models: int):
  """The data-parallel mesh of a single run (None: one device, or K > 1 models)."""
  if num_models > 1:
    if settings.run.per_device_batch_size:
      raise ConfigError(
        f"config.run.per_device_batch_size={settings.run.per_device_batch_size}: applies to a "
        f"single run (data parallelism); these {num_models} models share the model axis, set "
        "config.optim.batch_size"
      )
    return None
  mesh = parallel.make_mesh(
    parallel.data_devices(
      settings.run.num_devices, settings.optim.batch_size, settings.run.per_device_batch_size
    )
  )
  if mesh is not None and settings.optim.batch_size % mesh.size:
    raise ConfigError(
      f"config.optim.batch_size={settings.optim.batch_size}: not divisible by the {mesh.size} "
      "devices of the data axis (set config.run.num_devices or the batch size)"
    )
  return mesh


def estimated_bytes(
  model: models.VAE, num_models: int, optim: config_lib.Optim, data_bytes: int = 0
) -> int:
  """A lower bound of a run's memory: parameters with their gradients and Adam moments (4
  copies, float32) per model, a batch's activations (a few copies of the widest layer), and
  the data. Parameter shapes come from jax.eval_shape: nothing is allocated to count them."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *model.image_shape))))
  params = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
  widest = max(
    [math.prod(model.image_shape), *(s.shape[-1] for s in jax.tree.leaves(shapes) if s.shape)]
  )
  batch = max(optim.batch_size, optim.eval_batch_size) * widest * 4 * 8
  return num_models * (16 * params + batch) + data_bytes


def stage_factor(optim: config_lib.Optim, epoch):
  """lr_stage_decay**i for the stage i that holds epoch (0-based): stage i starts at epoch
  (growth**i - 1) / (growth - 1). Works on ints and on traced int32 arrays."""
  out, i = jnp.ones((), jnp.float32), 1
  start = 1  # Of stage i.
  while start < 2**31:  # Every stage that can start within the int32 step counter.
    out = jnp.where(epoch >= start, jnp.float32(optim.lr_stage_decay**i), out)
    start, i = start + optim.lr_stage_growth**i, i + 1
  return out


def optimizer(optim: config_lib.Optim, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Adam with the learning rate in its state (each model its own); betas and eps constants.

  lr_schedule 'staged' scales Adam's update by stage_factor of the step's epoch (a second
  transformation in the chain; 'constant' keeps the one-transformation state of older runs).
  """
  adam = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps"))(
    learning_rate=optim.learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps
  )
  if optim.lr_schedule == "constant":
    return adam
  return optax.chain(
    adam, optax.scale_by_schedule(lambda count: stage_factor(optim, count // steps_per_epoch))
  )


def adam_state(opt_state):
  """The inject_hyperparams state inside an optimizer state (alone, or first of a chain)."""
  return opt_state if hasattr(opt_state, "hyperparams") else opt_state[0]


def split_seed(seed) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(rng_init, the named run keys): key(seed) split once, as every run of that seed does."""
  rng_init, *rngs = jax.random.split(jax.random.key(seed), 1 + len(KEY_NAMES))
  return rng_init, dict(zip(KEY_NAMES, rngs))


def create_states(group: Group):
  """(states, keys): the K fresh train states and run keys, stacked on axis 0."""
  tx = optimizer(group.settings.optim, group.steps_per_epoch)
  x_1 = jnp.zeros((1, *group.image_shape), jnp.float32)

  def one(seed, learning_rate):
    rng_init, keys = split_seed(seed)
    params = group.model.data_init(group.model.init(rng_init, x_1)["params"], group.mean_image)
    state = step_lib.TrainState.create(apply_fn=group.model.apply, params=params, tx=tx)
    adam = adam_state(state.opt_state)
    adam = adam._replace(hyperparams={**adam.hyperparams, "learning_rate": learning_rate})
    opt_state = (
      adam if adam_state(state.opt_state) is state.opt_state else (adam, *state.opt_state[1:])
    )
    # A strongly typed step: a restored state has the same types as a fresh one.
    return state.replace(opt_state=opt_state, step=jnp.zeros((), jnp.int32)), keys

  if group.num_models == 1:  # The single run: built as it always was, then given the model axis.
    out = one(int(group.seeds[0]), jnp.float32(group.learning_rates[0]))
    return jax.tree.map(lambda a: a[None], out)
  return jax.jit(jax.vmap(one))(jnp.asarray(group.seeds), jnp.asarray(group.learning_rates))


def state_tree(states, keys) -> dict[str, Any]:
  """What a checkpoint holds as arrays: params, optimizer state, step and key data."""
  return {
    "params": states.params,
    "opt_state": states.opt_state,
    "step": states.step,
    "keys": {name: jax.random.key_data(keys[name]) for name in KEY_NAMES},
  }


def from_state_tree(states, tree: dict[str, Any]):
  """The inverse of state_tree: (states with the tree's arrays, keys)."""
  states = states.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
  return states, {name: jax.random.wrap_key_data(tree["keys"][name]) for name in KEY_NAMES}


def unstack(tree, k: int = 0):
  """Model k out of a K-stacked tree."""
  return jax.tree.map(lambda a: a[k], tree)
