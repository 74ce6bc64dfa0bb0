"""Training and evaluation of the reference VAE: one compiled call per epoch.

Randomness: ``rng = jax.random.key(config.seed)`` is split once into named keys and
deleted. The noise of step s is ``fold_in(rng_noise, s)`` (s = the global step held in the
train state), the shuffle of epoch e is ``fold_in(rng_shuffle, e)``: neither depends on
how the loop is run (scanned epoch or Python loop of steps).

Units: every ``*_sum`` is summed over examples (nats); reported losses are those sums
divided by the number of examples (nats per example), as the reference prints them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax import __version__, checkpoint, data, distributed, images, losses, models, summaries

TrainState = train_state.TrainState
METRICS = ("loss", "bce", "kl")
KEY_NAMES = ("shuffle", "noise", "eval", "images")  # The run's keys after rng_init.


class ConfigError(ValueError):
  """A config value is invalid; the message names the key and what was expected."""


class WorkdirError(ValueError):
  """The work directory cannot be used; nothing in it was changed."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid key (types are checked by ml_collections)."""
  positive_ints = ("num_epochs", "batch_size", "eval_batch_size", "hidden_dim", "latent_dim")
  for key in positive_ints:
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]}: expected an integer >= 1")
  if config.num_devices < 0:
    raise ConfigError(f"config.num_devices={config.num_devices}: expected 0 (all) or a count")
  if config.keep_checkpoints < 1:
    raise ConfigError(f"config.keep_checkpoints={config.keep_checkpoints}: expected an integer >= 1")
  for key in ("train_examples", "test_examples"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]}: expected 0 (all) or a positive count")
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    raise ConfigError(f"config.learning_rate={config.learning_rate}: expected a finite value > 0")
  if config.kl_warmup_epochs < 0:
    raise ConfigError(f"config.kl_warmup_epochs={config.kl_warmup_epochs}: expected 0 (none) or "
                      "a number of epochs")
  if not (config.beta >= 0 and math.isfinite(config.beta)):
    raise ConfigError(f"config.beta={config.beta}: expected a finite value >= 0")
  if config.init not in models.INITS:
    raise ConfigError(f"config.init={config.init!r}: expected one of {', '.join(models.INITS)}")
  if config.likelihood not in losses.LIKELIHOODS:
    raise ConfigError(f"config.likelihood={config.likelihood!r}: expected one of "
                      f"{', '.join(losses.LIKELIHOODS)}")
  if config.model not in ("vae", "ae"):
    raise ConfigError(f"config.model={config.model!r}: expected 'vae' or 'ae'")
  for key in ("gaussian_sigma", "free_bits"):
    if not (config[key] >= 0 and math.isfinite(config[key])):
      raise ConfigError(f"config.{key}={config[key]}: expected a finite value >= 0")
  for key in ("iwae_samples", "num_hidden_layers"):
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]}: expected an integer >= 1")
  if config.corruption not in CORRUPTIONS:
    raise ConfigError(f"config.corruption={config.corruption!r}: expected one of "
                      f"{', '.join(CORRUPTIONS)}")
  limit = 1.0 if config.corruption == "mask" else math.inf
  if not (0 <= config.corruption_level < limit and math.isfinite(config.corruption_level)):
    raise ConfigError(f"config.corruption_level={config.corruption_level}: expected a finite "
                      f"value >= 0{' and < 1 (a masked fraction)' if limit == 1.0 else ''}")
  if config.compute_dtype not in models.DTYPES:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}: expected one of "
                      f"{', '.join(models.DTYPES)}")
  if config.data_source not in data.SOURCES:
    raise ConfigError(f"config.data_source={config.data_source!r}: expected one of "
                      f"{', '.join(data.SOURCES)}")


def load_data(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Train and test splits as (images_NxHxW uint8, labels_N), cut to *_examples if set."""
  splits = {}
  for split, limit in (("train", config.train_examples), ("test", config.test_examples)):
    x, y = data.load_split(config.data_source, split, config.data_dir, config.tfds_name,
                           config.tfds_download)
    splits[split] = (x[:limit], y[:limit]) if limit else (x, y)
  return splits


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a step minimises; the defaults are the reference (Bernoulli ELBO, one sample).

  likelihood: losses.LIKELIHOODS; gaussian_sigma: fixed sigma (0: learned per pixel);
  free_bits: nats per latent dim below which KL is free (0: off); iwae_samples: K of the
  importance-weighted bound (1: ELBO); autoencoder: z = mu, no KL (deterministic AE);
  corruption, corruption_level: the encoder sees corrupt(x) while the likelihood scores the
  clean x (denoising; see ``corrupt``).
  """
  likelihood: str = "bernoulli"
  gaussian_sigma: float = 0.0
  free_bits: float = 0.0
  iwae_samples: int = 1
  autoencoder: bool = False
  corruption: str = "none"
  corruption_level: float = 0.0

  @classmethod
  def from_config(cls, config) -> "Objective":
    return cls(config.likelihood, float(config.gaussian_sigma), float(config.free_bits),
               int(config.iwae_samples), config.model == "ae", config.corruption,
               float(config.corruption_level))

  def for_evaluation(self) -> "Objective":
    """The test metric: the same likelihood and model, one sample, plain KL, clean inputs."""
    return dataclasses.replace(self, free_bits=0.0, iwae_samples=1, corruption="none",
                               corruption_level=0.0)


REFERENCE = Objective()


def make_model(config, input_dim: int = 784) -> models.VAE:
  return models.VAE(hidden_dim=config.hidden_dim, latent_dim=config.latent_dim,
                    output_dim=input_dim, init_scheme=config.init,
                    dtype=models.DTYPES[config.compute_dtype],
                    num_hidden_layers=config.num_hidden_layers,
                    learned_sigma=config.likelihood == "gaussian" and config.gaussian_sigma == 0)


def create_train_state(config, rng_init: jax.Array, input_dim: int = 784) -> TrainState:
  model = make_model(config, input_dim)
  params = model.init(rng_init, jnp.zeros((1, input_dim), jnp.float32))["params"]
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=optax.adam(config.learning_rate))
  # A strongly typed step: the state a checkpoint restores has the same types as a fresh one.
  return state.replace(step=jnp.zeros((), jnp.int32))


def to_float(x_u8_BxD: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1], as ToTensor does (x / 255, no binarization)."""
  return x_u8_BxD.astype(jnp.float32) / 255.0


CORRUPTIONS = ("none", "gaussian", "mask")


def corrupt(x_BxD: jax.Array, key: jax.Array, kind: str, level: float) -> jax.Array:
  """Noisy inputs for denoising: 'gaussian' adds N(0, level^2) and clips to [0, 1]; 'mask'
  sets each pixel to 0 with probability level; 'none' returns x."""
  if kind == "gaussian":
    return jnp.clip(x_BxD + level * jax.random.normal(key, x_BxD.shape, x_BxD.dtype), 0.0, 1.0)
  if kind == "mask":
    return jnp.where(jax.random.bernoulli(key, level, x_BxD.shape), 0.0, x_BxD)
  return x_BxD


def loss_fn(params, apply_fn: Callable, x_BxD: jax.Array, key: jax.Array | None,
            beta: float = 1.0, objective: Objective = REFERENCE
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-summed loss and its terms; key=None evaluates at z = mu.

  Terms: loss (what is minimised), bce (the reconstruction -log p(x|z) of the objective's
  likelihood; BCE for the reference) and kl (KL(q || p), unweighted; 0 for the AE).
  """
  if objective != REFERENCE:
    return _variant_loss(params, apply_fn, x_BxD, key, beta, objective)
  logits_BxD, mu_BxL, logvar_BxL = apply_fn({"params": params}, x_BxD, key)
  loss, bce, kl = losses.vae_loss(logits_BxD, x_BxD, mu_BxL, logvar_BxL, beta)
  return loss, {"loss": loss, "bce": bce, "kl": kl}


def nll_fn(params, objective: Objective) -> Callable:
  """(logits_BxD, x_BxD) -> -log p(x|z) per example (nats) under the objective's likelihood."""
  log_sigma = None
  if objective.likelihood == "gaussian":
    log_sigma = (params["log_sigma"] if objective.gaussian_sigma == 0
                 else jnp.log(jnp.float32(objective.gaussian_sigma)))
  return functools.partial(losses.nll_per_example, likelihood=objective.likelihood,
                           log_sigma=log_sigma)


def _variant_loss(params, apply_fn, x_BxD, key, beta, objective: Objective):
  """loss_fn for the ablation objectives (see Objective)."""
  nll = nll_fn(params, objective)
  x_in_BxD = x_BxD  # What the encoder sees; the likelihood always scores the clean x.
  if objective.corruption != "none" and key is not None:
    x_in_BxD = corrupt(x_BxD, jax.random.fold_in(key, 2), objective.corruption,
                       objective.corruption_level)
  if objective.autoencoder:
    logits_BxD, _, _ = apply_fn({"params": params}, x_in_BxD, None)
    rec = jnp.sum(nll(logits_BxD, x_BxD))
    return rec, {"loss": rec, "bce": rec, "kl": jnp.zeros_like(rec)}
  if objective.iwae_samples > 1 and key is not None:
    mu_BxL, logvar_BxL = apply_fn({"params": params}, x_in_BxD, method=models.VAE.encode)
    eps_KxBxL = jax.random.normal(key, (objective.iwae_samples, *mu_BxL.shape))
    z_KxBxL = models.reparameterize(mu_BxL, logvar_BxL, eps_KxBxL)
    logits = apply_fn({"params": params}, z_KxBxL.reshape(-1, mu_BxL.shape[-1]),
                      method=models.VAE.decode).reshape(*z_KxBxL.shape[:2], -1)
    nll_KxB = nll(logits, x_BxD[None])
    bound_B = losses.iwae_bound(-nll_KxB, z_KxBxL, mu_BxL, logvar_BxL)
    loss = -jnp.sum(bound_B)
    return loss, {"loss": loss, "bce": jnp.sum(nll_KxB[0]),
                  "kl": jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL))}
  logits_BxD, mu_BxL, logvar_BxL = apply_fn({"params": params}, x_in_BxD, key)
  rec = jnp.sum(nll(logits_BxD, x_BxD))
  kl = jnp.sum(losses.kl_per_example(mu_BxL, logvar_BxL))
  kl_term = losses.free_bits_kl(mu_BxL, logvar_BxL, objective.free_bits) if objective.free_bits else kl
  loss = rec + beta * kl_term
  return loss, {"loss": loss, "bce": rec, "kl": kl}


def train_step(state: TrainState, x_u8_BxD: jax.Array, rng_noise: jax.Array,
               beta: float = 1.0, kl_warmup_steps: int | jax.Array = 0,
               binarize: bool | jax.Array = False, objective: Objective = REFERENCE
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on a batch's summed loss; the noise key is fold_in(rng_noise, state.step).

  Ablation options (arrays when models are vmapped; at their defaults nothing is traced):
  ``kl_warmup_steps`` > 0 scales the KL weight by min(1, step / kl_warmup_steps), step
  counting from 0; ``binarize`` replaces the inputs by a fresh Bernoulli(pixel / 255) draw
  (dynamic binarization; key fold_in(noise key, 1)). Metrics report the weighted loss.
  """
  key = jax.random.fold_in(rng_noise, state.step)
  x_BxD = to_float(x_u8_BxD)
  if binarize is not False:
    x_bin_BxD = jax.random.bernoulli(jax.random.fold_in(key, 1), x_BxD).astype(x_BxD.dtype)
    x_BxD = jnp.where(binarize, x_bin_BxD, x_BxD)
  if not (isinstance(kl_warmup_steps, int) and kl_warmup_steps == 0):
    ramp = jnp.minimum(1.0, (state.step + 1) / jnp.maximum(kl_warmup_steps, 1))
    beta = beta * jnp.where(kl_warmup_steps > 0, ramp, 1.0)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.apply_fn, x_BxD, key, beta,
                                                   objective)
  metrics["examples"] = jnp.int32(x_u8_BxD.shape[0])
  return state.apply_gradients(grads=grads), metrics


def split_batches(idx_N: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(full batches idx_SxB, remainder idx_R): the last partial batch is kept, as PyTorch does."""
  num_full = idx_N.shape[0] // batch_size
  return idx_N[:num_full * batch_size].reshape(num_full, batch_size), idx_N[num_full * batch_size:]


def _add(a: dict, b: dict) -> dict:
  return jax.tree.map(jnp.add, a, b)


def make_mesh(num_devices: int = 0) -> Mesh | None:
  """A 1-D mesh ('data') over the first num_devices devices (0: all); None for one device.

  With None every array lives on the default device: the single-device path.
  """
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError(f"config.num_devices={num_devices}: only {available} devices "
                      f"({jax.default_backend()}) are visible")
  devices = jax.devices()[:num_devices or available]
  return None if len(devices) == 1 else Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh | None):
  """The tree on every device of the mesh (or on the default device when mesh is None).

  Leaves go through host memory, so with several processes each process supplies its own
  devices' copies (every process holds the same values).
  """
  if mesh is None:
    return jax.device_put(tree)
  sharding = NamedSharding(mesh, P())

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)))
    return jax.device_put(np.asarray(x), sharding)
  return jax.tree.map(put, tree)


def shard_batch(x_BxD: jax.Array, mesh: Mesh | None) -> jax.Array:
  """Splits a batch over the mesh's data axis when the axis divides it; otherwise as is.

  Parameters stay replicated, so XLA all-reduces the gradients. A batch the axis does not
  divide (only the epoch's last partial batch can be one) is computed whole on every device.
  """
  if mesh is None or x_BxD.shape[0] % mesh.size:
    return x_BxD
  return jax.lax.with_sharding_constraint(x_BxD, NamedSharding(mesh, P("data")))


def train_epoch(state: TrainState, images_u8_NxD: jax.Array, epoch: jax.Array,
                rng_shuffle: jax.Array, rng_noise: jax.Array, beta: float = 1.0, *,
                batch_size: int, on_step: Callable | None = None,
                steps_per_report: int = 0, mesh: Mesh | None = None,
                kl_warmup_steps: int | jax.Array = 0, binarize: bool | jax.Array = False,
                objective: Objective = REFERENCE) -> tuple[TrainState, dict[str, jax.Array]]:
  """A whole epoch as one traced function: shuffle, scan over full batches, then the rest.

  Data stay on the device as uint8; each step gathers its batch by index. Returns the
  new state and the epoch's summed metrics: loss, bce, kl (nats, summed over all
  examples), examples (how many were seen) and first_nonfinite_step (the global step whose
  loss was first NaN or Inf, -1 if none). ``on_step`` (host callback, optional) receives
  the global step every ``steps_per_report`` steps. ``mesh``: data-parallel over its
  'data' axis (see shard_batch); None: one device. ``kl_warmup_steps``, ``binarize``: see
  train_step.
  """
  perm_N = jax.random.permutation(jax.random.fold_in(rng_shuffle, epoch), images_u8_NxD.shape[0])
  full_SxB, rest_R = split_batches(perm_N, batch_size)

  def step(state, idx_B):
    state, metrics = train_step(state, shard_batch(images_u8_NxD[idx_B], mesh), rng_noise, beta,
                                kl_warmup_steps, binarize, objective)
    if on_step is not None:
      jax.lax.cond(state.step % steps_per_report == 0,
                   lambda s: jax.debug.callback(on_step, s), lambda s: None, state.step)
    return state, (metrics, state.step)

  def first_nonfinite(loss_S, step_S):
    bad_S = ~jnp.isfinite(loss_S)
    return jnp.where(bad_S.any(), step_S[jnp.argmax(bad_S)], -1)

  state, (metrics_S, step_S) = jax.lax.scan(step, state, full_SxB)
  sums = jax.tree.map(jnp.sum, metrics_S)
  bad_step = first_nonfinite(metrics_S["loss"], step_S)
  if rest_R.shape[0]:
    state, (metrics, rest_step) = step(state, rest_R)
    sums = _add(sums, metrics)
    bad_step = jnp.where(bad_step >= 0, bad_step,
                         first_nonfinite(metrics["loss"][None], rest_step[None]))
  return state, {**sums, "first_nonfinite_step": bad_step}


EPOCH_STATIC = ("batch_size", "on_step", "steps_per_report", "mesh", "kl_warmup_steps", "binarize",
                "objective")


def compile_train_epoch(state: TrainState, images_u8_NxD: jax.Array, rng_shuffle: jax.Array,
                        rng_noise: jax.Array, beta: jax.Array, **static):
  """train_epoch compiled ahead of time (state donated): call it as f(state, x, epoch, ...).

  ``static``: batch_size and optionally the other EPOCH_STATIC arguments of train_epoch.
  """
  return jax.jit(train_epoch, donate_argnames=("state",), static_argnames=EPOCH_STATIC).lower(
      state, images_u8_NxD, jnp.int32(1), rng_shuffle, rng_noise, beta, **static).compile()


def evaluate(params, apply_fn: Callable, images_u8_NxD: jax.Array, key: jax.Array,
             batch_size: int, mesh: Mesh | None = None,
             objective: Objective = REFERENCE) -> dict[str, jax.Array]:
  """Test-set sums: the reference's one-sample loss (loss, bce, kl) and the z = mu terms.

  Batch i draws its noise from fold_in(key, i). Keys: loss, bce, kl (sampled z) and
  loss_mean_z, bce_mean_z (z = mu; the KL term does not depend on z). With an ablation
  ``objective``: its likelihood and model, one sample, plain KL (Objective.for_evaluation).
  """
  full_SxB, rest_R = split_batches(jnp.arange(images_u8_NxD.shape[0]), batch_size)

  def batch_sums(i, idx_B):
    x_BxD = to_float(shard_batch(images_u8_NxD[idx_B], mesh))
    objective_eval = objective.for_evaluation()
    _, sampled = loss_fn(params, apply_fn, x_BxD, jax.random.fold_in(key, i), 1.0, objective_eval)
    _, mean_z = loss_fn(params, apply_fn, x_BxD, None, 1.0, objective_eval)
    return {**sampled, "loss_mean_z": mean_z["loss"], "bce_mean_z": mean_z["bce"]}

  def body(total, i_idx):
    return _add(total, batch_sums(*i_idx)), None

  zeros = {k: jnp.zeros((), jnp.float32) for k in (*METRICS, "loss_mean_z", "bce_mean_z")}
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(full_SxB.shape[0]), full_SxB))
  if rest_R.shape[0]:
    total = _add(total, batch_sums(full_SxB.shape[0], rest_R))
  return total


def epoch_images(params, apply_fn: Callable, x_u8_8xD: jax.Array, key: jax.Array,
                 latent_dim: int, num_samples: int = 64) -> tuple[jax.Array, jax.Array]:
  """(originals over reconstructions 16xD, samples num_samples x D), pixels in [0, 1].

  As the reference: reconstructions use a sampled z; samples decode z ~ N(0, I).
  """
  key_recon, key_sample = jax.random.split(key)
  x_8xD = to_float(x_u8_8xD)
  logits_8xD, _, _ = apply_fn({"params": params}, x_8xD, key_recon)
  z_SxL = jax.random.normal(key_sample, (num_samples, latent_dim))
  samples_SxD = apply_fn({"params": params}, z_SxL, method=models.VAE.generate)
  return jnp.concatenate([x_8xD, jax.nn.sigmoid(logits_8xD)]), samples_SxD


class ProgressBar:
  """A tqdm bar over one epoch's steps, fed from inside the compiled epoch by a callback."""

  def __init__(self, enabled: bool):
    self.enabled = enabled
    self.bar = None

  def start(self, epoch: int, total_steps: int, first_step: int):
    if self.enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, desc=f"epoch {epoch}", unit="step", leave=False,
                      file=sys.stderr)
      self.first_step = first_step

  def update(self, step):
    if self.bar is not None:
      self.bar.n = min(int(step) - self.first_step, self.bar.total)
      self.bar.refresh()

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def prepare_workdir(workdir: str | Path, restart: bool = False) -> Path:
  """Creates the work directory and checks it is writable.

  A directory holding a run with checkpoints is resumed (see train_and_evaluate); one
  holding a run without checkpoints is refused. ``restart`` moves an earlier run into
  ``replaced_<time>/`` inside the directory first: nothing is deleted.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir}: exists and is not a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror})") from None
  if restart:
    move_run_aside(workdir)
  elif (workdir / "metrics.jsonl").exists() and not checkpoint.has_checkpoints(workdir):
    raise WorkdirError(f"workdir {workdir}: holds a run (metrics.jsonl) with no checkpoint to "
                       "resume from; choose a new --workdir, or pass --config.restart=True to "
                       "move that run aside and start afresh")
  return workdir


def move_run_aside(workdir: Path) -> Path | None:
  """Moves an earlier run's files into workdir/replaced_<UTC time>/; returns it (None: no run)."""
  pattern = re.compile(r"(reconstruction|sample)_\d+\.png")
  names = [p for p in sorted(workdir.iterdir())
           if p.name in ("metrics.jsonl", "config.json", "tensorboard", checkpoint.SUBDIR)
           or pattern.fullmatch(p.name)]
  if not names:
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  dest = workdir / f"replaced_{stamp}"
  suffix = 1
  while dest.exists():
    dest, suffix = workdir / f"replaced_{stamp}_{suffix}", suffix + 1
  dest.mkdir()
  for path in names:
    path.rename(dest / path.name)
  print(f"restart: moved the earlier run to {dest}")
  return dest


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> None:
  """metrics.jsonl, one JSON record per epoch, rewritten whole and atomically."""
  checkpoint.write_text_atomic(workdir / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in records))


def state_tree(state: TrainState, keys: dict[str, jax.Array]) -> dict[str, Any]:
  """What a checkpoint holds as arrays: params, optimizer state, step and key data."""
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "keys": {name: jax.random.key_data(keys[name]) for name in KEY_NAMES}}


def from_state_tree(state: TrainState, tree: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
  """The inverse of state_tree: (state with the tree's arrays, keys)."""
  state = state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
  return state, {name: jax.random.wrap_key_data(tree["keys"][name]) for name in KEY_NAMES}


def resume(workdir: Path, config, fingerprint: dict[str, Any], state: TrainState,
           keys: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array], list[dict], Path]:
  """(state, keys, records, checkpoint dir) from workdir's latest checkpoint.

  Refuses (CheckpointError, nothing written) a checkpoint made with a config that differs
  in a key that changes the numbers, or made from other data.
  """
  with checkpoint.manager(workdir, read_only=True) as mngr:
    epoch = checkpoint.select(mngr, "latest")
    where = checkpoint.checkpoint_dir(mngr, epoch)
    meta = checkpoint.read_meta(mngr, epoch)
    differences = checkpoint.config_differences(meta["config"], config.to_dict())
    if differences:
      raise checkpoint.CheckpointError(
          f"workdir {workdir}: its checkpoint {where} was made with another config "
          f"(saved -> requested: {'; '.join(differences)}); resume with the saved values, or pass "
          "--config.restart=True to move that run aside and start afresh")
    if meta.get("data") != fingerprint:
      splits = sorted(s for s in fingerprint if meta.get("data", {}).get(s) != fingerprint[s])
      raise checkpoint.CheckpointError(
          f"workdir {workdir}: its checkpoint {where} was made from other data (the {' and '.join(splits)} "
          "split differs: examples or SHA-256); use the same data, or pass --config.restart=True")
    tree = checkpoint.restore(mngr, epoch, state_tree(state, keys), meta)
  state, keys = from_state_tree(state, tree)
  return state, keys, meta["records"], where


def format_table(records: list[dict[str, Any]]) -> str:
  """Per-epoch losses (nats per example) and times as a markdown table."""
  lines = ["| epoch | train loss | test loss | test BCE | test KL | test loss (z=mu) | train s | compile s |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in records:
    lines.append(f"| {r['epoch']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
                 f"{r['test_bce']:.4f} | {r['test_kl']:.4f} | {r['test_loss_mean_z']:.4f} | "
                 f"{r['train_seconds']:.3f} | {r['compile_seconds']:.2f} |")
  return "\n".join(lines)


def default_config() -> ml_collections.ConfigDict:
  from vae_jax.configs import default
  return default.get_config()


def restore_run(workdir: str | Path, which: str = "latest"
                ) -> tuple[ml_collections.ConfigDict, TrainState, dict[str, jax.Array], dict]:
  """(config, state, keys, meta) of a trained run's checkpoint: 'latest', 'best' or an epoch.

  Nothing is trained or written; the config is the one saved with the checkpoint.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir}: not a directory (expected one written by "
                       "`python -m vae_jax train`)")
  if not checkpoint.has_checkpoints(workdir):
    raise checkpoint.CheckpointError(f"workdir {workdir}: no checkpoint in {workdir / checkpoint.SUBDIR}"
                                     " (expected one written by `python -m vae_jax train`)")
  with checkpoint.manager(workdir, read_only=True) as mngr:
    epoch = checkpoint.select(mngr, which)
    meta = checkpoint.read_meta(mngr, epoch)
    config = default_config()
    config.update(meta["config"])  # Keys added since the checkpoint keep their defaults.
    input_dim = int(np.prod(meta["data"]["train"]["image_shape"]))
    rng_init, *rngs = jax.random.split(jax.random.key(config.seed), 1 + len(KEY_NAMES))
    state = create_train_state(config, rng_init, input_dim)
    tree = checkpoint.restore(mngr, epoch, state_tree(state, dict(zip(KEY_NAMES, rngs))), meta)
  state, keys = from_state_tree(state, tree)
  return config, state, keys, meta


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       splits: dict | None = None) -> tuple[TrainState, list[dict[str, Any]]]:
  """Trains the VAE as the reference does, checkpointing every epoch; resumes a killed run.

  Writes config.json, metrics.jsonl, checkpoints/ and the images to workdir. Returns the
  final state and the per-epoch records (those of metrics.jsonl). ``splits`` (optional)
  replaces the configured data source: {'train': (x, y), 'test': (x, y)}.
  """
  validate_config(config)
  splits = splits or load_data(config)
  x_train_u8, _ = splits["train"]
  n_train = len(x_train_u8)
  if config.batch_size > n_train:
    raise ConfigError(f"config.batch_size={config.batch_size}: larger than the training set "
                      f"({n_train} examples)")
  mesh = make_mesh(config.num_devices)
  if mesh is not None and config.batch_size % mesh.size:
    raise ConfigError(f"config.batch_size={config.batch_size}: not divisible by the {mesh.size} "
                      "devices of the data axis (set config.num_devices or the batch size)")
  if distributed.is_primary():  # Process 0 alone creates, checks and writes the workdir.
    prepare_workdir(workdir, restart=config.restart)
  distributed.barrier("prepare_workdir")
  workdir = Path(workdir)
  primary = distributed.is_primary()
  input_dim = int(np.prod(x_train_u8.shape[1:]))
  image_hw = x_train_u8.shape[1:]
  fingerprint = checkpoint.data_fingerprint(splits)

  # 1. A fresh state and keys from the seed: where a new run starts, and the layout a
  #    checkpoint is restored into.
  rng = jax.random.key(config.seed)
  rng_init, *rngs = jax.random.split(rng, 1 + len(KEY_NAMES))
  del rng  # Each use has its own key from here on.
  keys = dict(zip(KEY_NAMES, rngs))
  state = create_train_state(config, rng_init, input_dim)
  records, last_good = [], None
  # 2. A directory with checkpoints continues from its latest, if config and data match.
  if checkpoint.has_checkpoints(workdir):
    state, keys, records, last_good = resume(workdir, config, fingerprint, state, keys)
    if primary:
      print(f"Resuming from {last_good} (epoch {records[-1]['epoch']})")
  # 3. Writes start here: metrics.jsonl is rewritten from the checkpoint's records, so
  #    epochs finished after the last checkpoint are dropped, never duplicated.
  if primary:
    checkpoint.write_text_atomic(workdir / "config.json", config.to_json(indent=2) + "\n")
    write_metrics(workdir, records)
  # Every process has looked for checkpoints before any creates the directory.
  distributed.barrier("resume")
  mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
  try:
    state = _train_epochs(config, workdir, mngr, mesh, state, keys, records, last_good, fingerprint,
                          splits, input_dim, image_hw)
  finally:
    mngr.close()
  return state, records


def _train_epochs(config, workdir, mngr, mesh, state, keys, records, last_good, fingerprint,
                  splits, input_dim, image_hw) -> TrainState:
  """Epochs len(records)+1 .. num_epochs: train, evaluate, check, checkpoint, log, images."""
  (x_train_u8, _), (x_test_u8, _) = splits["train"], splits["test"]
  n_train, n_test = len(x_train_u8), len(x_test_u8)
  primary = distributed.is_primary()
  # Data live on the device(s) as flat uint8 for the whole run; parameters are replicated.
  train_u8_NxD = replicate(np.reshape(x_train_u8, (n_train, input_dim)), mesh)
  test_u8_NxD = replicate(np.reshape(x_test_u8, (n_test, input_dim)), mesh)
  state, keys = replicate((state, keys), mesh)
  steps_per_epoch = -(-n_train // config.batch_size)
  num_shown = min(8, n_test)  # Test images shown with their reconstructions.
  first_epoch = len(records) + 1
  if first_epoch > config.num_epochs:
    print(f"Nothing to train: {workdir} holds {len(records)} epochs, config.num_epochs="
          f"{config.num_epochs}")
    return state

  tensorboard = summaries.open_writer(workdir / "tensorboard") if primary and config.tensorboard else None
  progress = ProgressBar(config.progress)
  steps_per_report = max(1, steps_per_epoch // 50)
  beta = jnp.float32(config.beta)
  t0 = time.perf_counter()
  on_step = progress.update if config.progress else None
  static = dict(batch_size=config.batch_size, on_step=on_step, steps_per_report=steps_per_report,
                mesh=mesh, kl_warmup_steps=config.kl_warmup_epochs * steps_per_epoch,
                binarize=config.binarize, objective=Objective.from_config(config))
  if config.debug_nans:  # jax_debug_nans checks jitted calls, not ahead-of-time compiled ones.
    train_epoch_c = functools.partial(jax.jit(train_epoch, static_argnames=EPOCH_STATIC), **static)
  else:
    train_epoch_c = compile_train_epoch(state, train_u8_NxD, keys["shuffle"], keys["noise"], beta,
                                        **static)
  evaluate_c = jax.jit(evaluate, static_argnames=("apply_fn", "batch_size", "mesh", "objective")).lower(
      state.params, state.apply_fn, test_u8_NxD, keys["eval"], batch_size=config.eval_batch_size,
      mesh=mesh, objective=Objective.from_config(config)).compile()
  images_c = jax.jit(epoch_images, static_argnames=("apply_fn", "latent_dim")).lower(
      state.params, state.apply_fn, test_u8_NxD[:num_shown], keys["images"],
      latent_dim=config.latent_dim).compile()
  compile_seconds = time.perf_counter() - t0

  for epoch in range(first_epoch, config.num_epochs + 1):
    progress.start(epoch, steps_per_epoch, first_step=(epoch - 1) * steps_per_epoch)
    t0 = time.perf_counter()
    with jax.debug_nans(config.debug_nans):
      state, train_sums = train_epoch_c(state, train_u8_NxD, jnp.int32(epoch), keys["shuffle"],
                                        keys["noise"], beta)
      train_sums = jax.device_get(train_sums)  # Waits for the epoch to finish.
    train_seconds = time.perf_counter() - t0
    progress.close()
    test_sums = jax.device_get(
        evaluate_c(state.params, test_u8_NxD, jax.random.fold_in(keys["eval"], epoch)))
    bad_step = int(train_sums["first_nonfinite_step"])
    if bad_step >= 0 or not math.isfinite(float(test_sums["loss"])):
      where = f"step {bad_step}: non-finite training loss" if bad_step >= 0 else "non-finite test loss"
      raise FloatingPointError(
          f"epoch {epoch}, {where}; last good checkpoint: {last_good or 'none yet'} (left "
          "untouched); rerun with --config.debug_nans=True to find the operation that made it")
    examples = int(train_sums["examples"])
    record = {
        "epoch": epoch,
        "train_loss": float(train_sums["loss"]) / examples,
        "train_bce": float(train_sums["bce"]) / examples,
        "train_kl": float(train_sums["kl"]) / examples,
        "test_loss": float(test_sums["loss"]) / n_test,
        "test_bce": float(test_sums["bce"]) / n_test,
        "test_kl": float(test_sums["kl"]) / n_test,
        "test_loss_mean_z": float(test_sums["loss_mean_z"]) / n_test,
        "test_bce_mean_z": float(test_sums["bce_mean_z"]) / n_test,
        "train_examples": examples,
        "steps": int(state.step),
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds if epoch == first_epoch else 0.0,
    }
    records.append(record)
    # The checkpoint first, then the log it covers: a kill in between loses no record.
    last_good = checkpoint.save(mngr, epoch, state_tree(state, keys), {
        "config": config.to_dict(), "records": records, "data": fingerprint,
        "versions": {"jax": jax.__version__, "vae_jax": __version__}})
    if primary:
      print(f"====> Epoch: {epoch} Average loss: {record['train_loss']:.4f}")
      print(f"====> Test set loss: {record['test_loss']:.4f}")
      write_metrics(workdir, records)
    if config.save_images:  # Every process takes part in the computation; one writes.
      comparison, samples = jax.device_get(images_c(
          state.params, test_u8_NxD[:num_shown], jax.random.fold_in(keys["images"], epoch)))
    summaries.write_records(tensorboard, [record])
    if config.save_images and primary:
      grids = {"reconstruction": images.image_grid(comparison.reshape(-1, *image_hw), nrow=8),
               "sample": images.image_grid(samples.reshape(-1, *image_hw), nrow=8)}
      for name, grid in grids.items():
        images.save_png(workdir / f"{name}_{epoch}.png", grid)
        summaries.write_grid(tensorboard, name, grid, epoch)
  if tensorboard is not None:
    tensorboard.close()
  return state
