"""Objectives by name: each one pure function returning (loss, metrics).

``fn(params, apply_fn, x_BxHxWxC, key, hparams) -> (loss, metrics)``: x is float in [0, 1],
``key`` the step's noise key (None: deterministic, z = mu), ``hparams`` the objective's
``Hparams`` (a flax.struct dataclass: numeric fields are traced, so models trained together
can each have their own value; ``static`` fields shape the program). ``metrics`` are sums
over the batch's examples (nats); their keys are what every output shows (train_<key>,
test_<key>), and ``loss`` is what is minimised. Registered with
``@register_objective(name, Hparams)``; the Hparams fields become ``config.objective``
settings. Test metrics come from ``evaluate_with`` (default 'elbo': the ELBO under the same
likelihood, beta 1, clean inputs) with ``Hparams.for_evaluation``. Each objective owns its
settings: another objective may have a field of the same name with another default.

The run context: fields named in CONTEXT are not config settings; the run fills them into
the Hparams when a field of that name exists (declare it ``static`` with any default):
``num_train_examples`` (examples in the training split; beta_tcvae's N),
``steps_per_epoch`` (ceil(num_train_examples / optim.batch_size): epochs of a schedule
to steps, as ElboHparams.kl_warmup_epochs), ``num_labelled_examples`` (the training
examples whose label the run keeps: ``data.labels_per_class`` x classes, or all). ``at_step(step)`` receives the global step
(0-based int32, traced).

Latent models: an objective reaches p(z) and q(z|x) through the model's methods
(``importance_terms(x, key, K)``, ``elbo_terms(x, key)``), which serve every prior and
posterior family. An objective is taken to read ``encode``'s (or ``__call__``'s) (mu,
logvar) as the whole posterior and N(0, I) as the prior unless it declares otherwise
(``gaussian_latent=False``, or a function of its settings; the importance-weighted family
declares False by default): a run whose prior or posterior is another is then refused in
one line, never trained with a term dropped. Test metrics of runs whose latents differ stay
comparable: every run evaluates with ``evaluate_with``'s objective, except a model with
latents of its own (``latent_choice = False`` and no closed-form KL: hvae2), which
evaluates with its training objective.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import struct

from vae_jax import losses
from vae_jax.registry import ConfigError, Registry

REGISTRY = Registry("objective", default="elbo")
F = TypeVar("F", bound=Callable)  # An objective register_objective returns as it was given.
CORRUPTIONS = ("none", "gaussian", "mask")
# Fields the run fills in (from the data and the batch size), never the config: see above.
CONTEXT = ("num_train_examples", "steps_per_epoch", "num_labelled_examples")


def static(default: Any) -> Any:
  """A setting that shapes the program (a string, a sample count): not traced, not batched."""
  return struct.field(pytree_node=False, default=default)


def internal(default: Any) -> Any:
  """A static field that is no config setting: the objective's own switch (for_evaluation
  sets it), which a config can neither see nor set."""
  return struct.field(pytree_node=False, default=default, metadata={"setting": False})


def is_setting(f: dataclasses.Field) -> bool:
  """Whether an Hparams field is a config.objective setting (run context and internal aside)."""
  return f.name not in CONTEXT and f.metadata.get("setting", True)


@struct.dataclass
class Hparams:
  """Base of every objective's settings: subclass it with ``@flax.struct.dataclass``; each
  field with its default is a ``config.objective`` setting (``static`` ones shape the
  program; the others are traced, so a sweep batches their values), except the run-context
  fields (CONTEXT: num_train_examples, steps_per_epoch) that the run fills in.
  at_step and for_evaluation default to no change; check() refuses bad values (ConfigError)."""

  def at_step(self, step):
    """The settings at a global step (schedules such as KL warm-up)."""
    return self

  def for_evaluation(self):
    """The settings of the test metric."""
    return self

  def check(self):
    pass


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  fn: Callable
  hparams_cls: type
  evaluate_with: str | None  # None: this objective, with for_evaluation().
  importance_weighted: bool = False  # The importance-weighted family (vae_k, iwae).
  uses_labels: bool = False  # fn(..., hparams, labels): labels_B int32, -1 where unknown.
  # True, or settings -> bool: needs encode's (mu, logvar) as q(z|x) and p(z) = N(0, I).
  gaussian_latent: bool | Callable[[dict[str, Any]], bool] = True
  posterior_density: bool = False  # Needs log q(z|x) at any z (VAE.posterior_log_prob).


def register_objective(
  name: str,
  hparams_cls: type = Hparams,
  evaluate_with: str | None = "elbo",
  importance_weighted: bool = False,
  uses_labels: bool = False,
  replace: bool = False,
  gaussian_latent: bool | Callable[[dict[str, Any]], bool] | None = None,
  posterior_density: bool = False,
) -> Callable[[F], F]:
  """Function decorator: registers fn(params, apply_fn, x, key, hparams) -> (loss, metrics)
  as ``config.objective.name=name``.

  hparams_cls: a ``@flax.struct.dataclass`` subclass of Hparams (its fields are the
  settings). evaluate_with: the objective of the test metric ('elbo'; None: this one, with
  ``for_evaluation()``). importance_weighted: of the importance-weighted family (it uses the
  model's ``importance_terms``). gaussian_latent: whether (True, False, or a function of the
  settings that says when) fn reads ``encode``'s or ``__call__``'s (mu, logvar) as the
  posterior and N(0, I) as the prior, so that other latent models are refused; None (the
  default): True but for the importance-weighted family. An objective written on
  ``elbo_terms`` or ``importance_terms`` declares False. posterior_density: fn calls the model's
  ``posterior_log_prob`` (log q at given z), which flows and hierarchies lack. uses_labels: fn takes a sixth argument, the
  batch's labels (int32, -1 where the run keeps no label: semi-supervised learning), and
  passes them to a conditional model itself; it needs a conditional model. Refused at once:
  a name already taken (unless replace=True), Hparams that are not a flax struct dataclass.
  At the first trace: metrics without a scalar 'loss', or with a non-scalar value.
  """
  if not (
    isinstance(hparams_cls, type)
    and issubclass(hparams_cls, Hparams)
    and hparams_cls.__dict__.get("_flax_dataclass", False)
  ):
    raise ConfigError(
      f"register_objective({name!r}): hparams {hparams_cls!r} must be a subclass of "
      "vae_jax.Hparams decorated with @flax.struct.dataclass (a plain class has no "
      "settings and is not traced)"
    )

  def decorate(fn: F) -> F:
    settings = {f.name: f.default for f in dataclasses.fields(hparams_cls) if is_setting(f)}
    REGISTRY.register(
      name,
      Objective(
        name,
        checked(fn, name),
        hparams_cls,
        evaluate_with,
        importance_weighted,
        uses_labels,
        not importance_weighted if gaussian_latent is None else gaussian_latent,
        posterior_density,
      ),
      settings,
      origin=fn,
      replace=replace,
    )
    return fn

  return decorate


def checked(fn: Callable, name: str) -> Callable:
  """fn, refusing at trace time (ConfigError naming the objective) metrics that lack a
  scalar 'loss' or hold a non-scalar value."""

  @functools.wraps(fn)
  def objective(*args, **kwargs):
    out = fn(*args, **kwargs)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
      raise ConfigError(
        f"objective {name!r}: returned {type(out).__name__}; expected (loss, metrics dict)"
      )
    metrics = out[1]
    if "loss" not in metrics:
      raise ConfigError(
        f"objective {name!r}: its metrics {sorted(metrics)} lack 'loss' (the "
        "minimised value, a batch sum)"
      )
    for key, value in metrics.items():
      if jnp.ndim(value) != 0:
        raise ConfigError(
          f"objective {name!r}: metric {key!r} has shape {jnp.shape(value)}; "
          "expected a scalar (a sum over the batch's examples)"
        )
    return out

  return objective


def check_model(
  objective: Objective,
  settings: dict[str, Any],
  model_name: str,
  analytic_kl: bool,
  conditional: bool = False,
  posterior_density: bool = True,
) -> None:
  """Refuses an objective that needs the Gaussian posterior and N(0, I) prior for a run with
  other latents, one that needs q's density at any z for a posterior without one, and an
  objective that uses labels for a model that does not see them."""
  if objective.posterior_density and not posterior_density:
    raise ConfigError(
      f"config.objective.name={objective.name!r}: needs log q(z|x) at any z; model "
      f"{model_name!r} with this config.posterior has none (a flow, or latents of the "
      "model's own): choose config.posterior.name=gaussian or vmf"
    )
  needs = objective.gaussian_latent
  if not analytic_kl and (needs(settings) if callable(needs) else needs):
    raise ConfigError(
      f"config.objective.name={objective.name!r}"
      f"{' with these settings' if callable(needs) else ''}: reads the encoder's (mu, logvar) "
      f"as q(z|x) and N(0, I) as p(z); model {model_name!r} has other latents here (a "
      "hierarchy of its own, or another config.prior / config.posterior): choose elbo, vae_k "
      "or iwae, which take any"
    )
  if objective.uses_labels and not conditional:
    from vae_jax import models

    usable = sorted(e.name for e in models.REGISTRY.entries.values() if e.target.conditional)
    raise ConfigError(
      f"config.objective.name={objective.name!r}: uses labels, and model {model_name!r} "
      f"does not see them; choose a conditional model ({', '.join(usable)})"
    )


def with_labels(objective: Objective, conditional: bool) -> Callable:
  """fn(params, apply_fn, x, key, hparams, labels=None) -> (loss, metrics): the objective
  on a batch and its labels. labels None: the objective exactly as registered (a run
  without labels compiles the program it always did). Otherwise an objective that uses
  labels receives them, and for any other a conditional model receives them through
  apply_fn, so every objective trains a conditional model."""

  def fn(params, apply_fn, x, key, hparams, labels=None):
    if labels is None:
      return objective.fn(params, apply_fn, x, key, hparams)
    if objective.uses_labels:
      return objective.fn(params, apply_fn, x, key, hparams, labels)
    if conditional:
      apply_fn = functools.partial(apply_fn, labels=labels)
    return objective.fn(params, apply_fn, x, key, hparams)

  return fn


def dynamic_settings(objective: Objective) -> tuple[str, ...]:
  """Settings traced as arrays (a sweep batches their values in one program)."""
  return tuple(
    f.name
    for f in dataclasses.fields(objective.hparams_cls)
    if f.metadata.get("pytree_node", True) and is_setting(f)
  )


def make_hparams(resolved: tuple[Any, dict[str, Any]], **context) -> Hparams:
  """An objective's Hparams from config.parse's (entry, settings) and the run's context."""
  entry, settings = resolved
  cls = entry.target.hparams_cls
  fields = {f.name for f in dataclasses.fields(cls)}
  hparams = cls(**settings, **{k: v for k, v in context.items() if k in fields})
  hparams.check()
  return hparams


def evaluation(
  resolved: tuple[Any, dict[str, Any]], shared_metric: bool = True, **context
) -> tuple[Objective, Hparams]:
  """(objective, hparams) of the test metric, from the training objective's settings: its
  ``evaluate_with`` objective when shared_metric (config.shared_test_metric: every run but
  one whose model has latents of its own), else the training objective."""
  entry, settings = resolved
  objective = entry.target
  if objective.evaluate_with is not None and shared_metric:
    target = REGISTRY.get(objective.evaluate_with)
    shared = {k: v for k, v in settings.items() if k in target.settings}
    resolved = (target, {**target.settings, **shared})
    objective = target.target
  return objective, make_hparams(resolved, **context).for_evaluation()


def corrupt(x, key: jax.Array, kind: str, level) -> jax.Array:
  """Noisy inputs for denoising: 'gaussian' adds N(0, level^2) and clips to [0, 1]; 'mask'
  sets each pixel to 0 with probability level; 'none' returns x."""
  if kind == "gaussian":
    return jnp.clip(x + level * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)
  if kind == "mask":
    return jnp.where(jax.random.bernoulli(key, level, x.shape), 0.0, x)
  return x


@struct.dataclass
class Likelihood(Hparams):
  """p(x|z): 'bernoulli' (reference), 'continuous_bernoulli', 'gaussian' (mean sigmoid of the
  decoder's output) or 'normal' (mean the output itself: real-valued data), for both
  gaussian_sigma a fixed sigma or 0: a learned per-pixel sigma (the model's log_sigma); or
  'discretized_logistic' or 'beta_binomial' (the 256 levels of uint8 pixels; the decoder
  gives each pixel a location and a scale, or the beta-binomial's log alpha and log beta)."""

  likelihood: str = static("bernoulli")
  gaussian_sigma: float = static(0.0)

  def check(self):
    if self.likelihood not in losses.LIKELIHOODS:
      raise ConfigError(
        f"config.objective.likelihood={self.likelihood!r}: expected one of "
        f"{', '.join(losses.LIKELIHOODS)}"
      )
    if not self.gaussian_sigma >= 0:
      raise ConfigError(f"config.objective.gaussian_sigma={self.gaussian_sigma}: expected >= 0")

  @property
  def learned_sigma(self) -> bool:
    return self.likelihood in losses.WITH_SIGMA and self.gaussian_sigma == 0


def nll_fn(params: Mapping[str, Any], hparams: Likelihood, batch_ndim: int = 1) -> Callable:
  """(logits, x) -> -log p(x|z) per example (nats) under the hparams' likelihood."""
  log_sigma = None
  if hparams.likelihood in losses.WITH_SIGMA:
    log_sigma = (
      params["log_sigma"]
      if hparams.gaussian_sigma == 0
      else jnp.log(jnp.float32(hparams.gaussian_sigma))
    )
  return functools.partial(
    losses.nll_per_example,
    likelihood=hparams.likelihood,
    log_sigma=log_sigma,
    batch_ndim=batch_ndim,
  )


@struct.dataclass
class Denoising(Likelihood):
  """The encoder sees corrupt(x) (corruption 'gaussian' or 'mask' at corruption_level) while
  the likelihood scores the clean x; the test metric uses clean inputs."""

  corruption: str = static("none")
  corruption_level: float = 0.0

  def check(self):
    super().check()
    if self.corruption not in CORRUPTIONS:
      raise ConfigError(
        f"config.objective.corruption={self.corruption!r}: expected one of {', '.join(CORRUPTIONS)}"
      )
    level, limit = float(self.corruption_level), 1.0 if self.corruption == "mask" else float("inf")
    if not 0 <= level < limit or level == float("inf"):
      raise ConfigError(
        f"config.objective.corruption_level={level}: expected a finite value "
        f">= 0{' and < 1 (a masked fraction)' if limit == 1.0 else ''}"
      )

  def encoder_input(self, x, key):
    if self.corruption == "none" or key is None:
      return x
    return corrupt(x, jax.random.fold_in(key, 2), self.corruption, self.corruption_level)

  def for_evaluation(self):
    return self.replace(corruption="none", corruption_level=0.0)


from vae_jax import (  # noqa: E402,F401  (registers the built-in objectives)
  estimators,
  objectives_builtin,
  semisupervised,
)
