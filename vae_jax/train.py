"""Training and evaluation of the reference VAE: one compiled call per epoch.

Randomness: ``rng = jax.random.key(config.seed)`` is split once into named keys and
deleted. The noise of step s is ``fold_in(rng_noise, s)`` (s = the global step held in the
train state), the shuffle of epoch e is ``fold_in(rng_shuffle, e)``: neither depends on
how the loop is run (scanned epoch or Python loop of steps).

Units: every ``*_sum`` is summed over examples (nats); reported losses are those sums
divided by the number of examples (nats per example), as the reference prints them.
"""

from __future__ import annotations

import json
import math
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

from vae_jax import data, images, losses, models

TrainState = train_state.TrainState
METRICS = ("loss", "bce", "kl")


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
  for key in ("train_examples", "test_examples"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]}: expected 0 (all) or a positive count")
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    raise ConfigError(f"config.learning_rate={config.learning_rate}: expected a finite value > 0")
  if not (config.beta >= 0 and math.isfinite(config.beta)):
    raise ConfigError(f"config.beta={config.beta}: expected a finite value >= 0")
  if config.init not in models.INITS:
    raise ConfigError(f"config.init={config.init!r}: expected one of {', '.join(models.INITS)}")
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


def create_train_state(config, rng_init: jax.Array, input_dim: int = 784) -> TrainState:
  model = models.VAE(hidden_dim=config.hidden_dim, latent_dim=config.latent_dim,
                     output_dim=input_dim, init_scheme=config.init)
  params = model.init(rng_init, jnp.zeros((1, input_dim), jnp.float32))["params"]
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=optax.adam(config.learning_rate))


def to_float(x_u8_BxD: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1], as ToTensor does (x / 255, no binarization)."""
  return x_u8_BxD.astype(jnp.float32) / 255.0


def loss_fn(params, apply_fn: Callable, x_BxD: jax.Array, key: jax.Array | None,
            beta: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-summed loss and its terms; key=None evaluates at z = mu."""
  logits_BxD, mu_BxL, logvar_BxL = apply_fn({"params": params}, x_BxD, key)
  loss, bce, kl = losses.vae_loss(logits_BxD, x_BxD, mu_BxL, logvar_BxL, beta)
  return loss, {"loss": loss, "bce": bce, "kl": kl}


def train_step(state: TrainState, x_u8_BxD: jax.Array, rng_noise: jax.Array,
               beta: float = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on a batch's summed loss; the noise key is fold_in(rng_noise, state.step)."""
  key = jax.random.fold_in(rng_noise, state.step)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      state.params, state.apply_fn, to_float(x_u8_BxD), key, beta)
  metrics["examples"] = jnp.int32(x_u8_BxD.shape[0])
  return state.apply_gradients(grads=grads), metrics


def split_batches(idx_N: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(full batches idx_SxB, remainder idx_R): the last partial batch is kept, as PyTorch does."""
  num_full = idx_N.shape[0] // batch_size
  return idx_N[:num_full * batch_size].reshape(num_full, batch_size), idx_N[num_full * batch_size:]


def _add(a: dict, b: dict) -> dict:
  return jax.tree.map(jnp.add, a, b)


def train_epoch(state: TrainState, images_u8_NxD: jax.Array, epoch: jax.Array,
                rng_shuffle: jax.Array, rng_noise: jax.Array, beta: float = 1.0, *,
                batch_size: int, on_step: Callable | None = None,
                steps_per_report: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  """A whole epoch as one traced function: shuffle, scan over full batches, then the rest.

  Data stay on the device as uint8; each step gathers its batch by index. Returns the
  new state and the epoch's summed metrics: loss, bce, kl (nats, summed over all
  examples) and examples (how many were seen). ``on_step``
  (host callback, optional) receives the global step every ``steps_per_report`` steps.
  """
  perm_N = jax.random.permutation(jax.random.fold_in(rng_shuffle, epoch), images_u8_NxD.shape[0])
  full_SxB, rest_R = split_batches(perm_N, batch_size)

  def step(state, idx_B):
    state, metrics = train_step(state, images_u8_NxD[idx_B], rng_noise, beta)
    if on_step is not None:
      jax.lax.cond(state.step % steps_per_report == 0,
                   lambda s: jax.debug.callback(on_step, s), lambda s: None, state.step)
    return state, metrics

  state, metrics_S = jax.lax.scan(step, state, full_SxB)
  sums = jax.tree.map(jnp.sum, metrics_S)
  if rest_R.shape[0]:
    state, metrics = step(state, rest_R)
    sums = _add(sums, metrics)
  return state, sums


def compile_train_epoch(state: TrainState, images_u8_NxD: jax.Array, rng_shuffle: jax.Array,
                        rng_noise: jax.Array, beta: jax.Array, *, batch_size: int,
                        on_step: Callable | None = None, steps_per_report: int = 0):
  """train_epoch compiled ahead of time (state donated): call it as f(state, x, epoch, ...)."""
  return jax.jit(train_epoch, donate_argnames=("state",),
                 static_argnames=("batch_size", "on_step", "steps_per_report")).lower(
                     state, images_u8_NxD, jnp.int32(1), rng_shuffle, rng_noise, beta,
                     batch_size=batch_size, on_step=on_step,
                     steps_per_report=steps_per_report).compile()


def evaluate(params, apply_fn: Callable, images_u8_NxD: jax.Array, key: jax.Array,
             batch_size: int) -> dict[str, jax.Array]:
  """Test-set sums: the reference's one-sample loss (loss, bce, kl) and the z = mu terms.

  Batch i draws its noise from fold_in(key, i). Keys: loss, bce, kl (sampled z) and
  loss_mean_z, bce_mean_z (z = mu; the KL term does not depend on z).
  """
  full_SxB, rest_R = split_batches(jnp.arange(images_u8_NxD.shape[0]), batch_size)

  def batch_sums(i, idx_B):
    x_BxD = to_float(images_u8_NxD[idx_B])
    _, sampled = loss_fn(params, apply_fn, x_BxD, jax.random.fold_in(key, i))
    _, mean_z = loss_fn(params, apply_fn, x_BxD, None)
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


def prepare_workdir(workdir: str | Path) -> Path:
  """Creates the work directory; refuses one that holds an earlier run or is not writable."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir}: exists and is not a directory")
  if (workdir / "metrics.jsonl").exists():
    raise WorkdirError(f"workdir {workdir}: already holds a run (metrics.jsonl); "
                       "choose a new --workdir or move that one away")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror})") from None
  return workdir


def format_table(records: list[dict[str, Any]]) -> str:
  """Per-epoch losses (nats per example) and times as a markdown table."""
  lines = ["| epoch | train loss | test loss | test BCE | test KL | test loss (z=mu) | train s | compile s |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in records:
    lines.append(f"| {r['epoch']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
                 f"{r['test_bce']:.4f} | {r['test_kl']:.4f} | {r['test_loss_mean_z']:.4f} | "
                 f"{r['train_seconds']:.3f} | {r['compile_seconds']:.2f} |")
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       splits: dict | None = None) -> tuple[TrainState, list[dict[str, Any]]]:
  """Trains the VAE as the reference does, writing metrics, images and config to workdir.

  Returns the final state and the per-epoch records also written to ``workdir/metrics.jsonl``. ``splits``
  (optional) replaces the configured data source: {'train': (x, y), 'test': (x, y)}.
  """
  validate_config(config)
  splits = splits or load_data(config)
  x_train_u8, _ = splits["train"]
  x_test_u8, _ = splits["test"]
  n_train, n_test = len(x_train_u8), len(x_test_u8)
  if config.batch_size > n_train:
    raise ConfigError(f"config.batch_size={config.batch_size}: larger than the training set "
                      f"({n_train} examples)")
  workdir = prepare_workdir(workdir)
  input_dim = int(np.prod(x_train_u8.shape[1:]))
  image_hw = x_train_u8.shape[1:]
  (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")

  rng = jax.random.key(config.seed)
  rng_init, rng_shuffle, rng_noise, rng_eval, rng_images = jax.random.split(rng, 5)
  del rng  # Each use has its own key from here on.

  # Data live on the device as flat uint8 for the whole run.
  train_u8_NxD = jax.device_put(np.reshape(x_train_u8, (n_train, input_dim)))
  test_u8_NxD = jax.device_put(np.reshape(x_test_u8, (n_test, input_dim)))
  state = create_train_state(config, rng_init, input_dim)
  steps_per_epoch = -(-n_train // config.batch_size)
  num_shown = min(8, n_test)  # Test images shown with their reconstructions.

  progress = ProgressBar(config.progress)
  steps_per_report = max(1, steps_per_epoch // 50)
  beta = jnp.float32(config.beta)
  t0 = time.perf_counter()
  train_epoch_c = compile_train_epoch(
      state, train_u8_NxD, rng_shuffle, rng_noise, beta, batch_size=config.batch_size,
      on_step=progress.update if config.progress else None, steps_per_report=steps_per_report)
  evaluate_c = jax.jit(evaluate, static_argnames=("apply_fn", "batch_size")).lower(
      state.params, state.apply_fn, test_u8_NxD, rng_eval, batch_size=config.eval_batch_size
  ).compile()
  images_c = jax.jit(epoch_images, static_argnames=("apply_fn", "latent_dim")).lower(
      state.params, state.apply_fn, test_u8_NxD[:num_shown], rng_images, latent_dim=config.latent_dim
  ).compile()
  compile_seconds = time.perf_counter() - t0

  records = []
  for epoch in range(1, config.num_epochs + 1):
    progress.start(epoch, steps_per_epoch, first_step=(epoch - 1) * steps_per_epoch)
    t0 = time.perf_counter()
    state, train_sums = train_epoch_c(state, train_u8_NxD, jnp.int32(epoch), rng_shuffle,
                                      rng_noise, beta)
    train_sums = jax.device_get(train_sums)  # Waits for the epoch to finish.
    train_seconds = time.perf_counter() - t0
    progress.close()
    test_sums = jax.device_get(
        evaluate_c(state.params, test_u8_NxD, jax.random.fold_in(rng_eval, epoch)))
    record = {
        "epoch": epoch,
        "train_loss": float(train_sums["loss"]) / int(train_sums["examples"]),
        "train_bce": float(train_sums["bce"]) / int(train_sums["examples"]),
        "train_kl": float(train_sums["kl"]) / int(train_sums["examples"]),
        "test_loss": float(test_sums["loss"]) / n_test,
        "test_bce": float(test_sums["bce"]) / n_test,
        "test_kl": float(test_sums["kl"]) / n_test,
        "test_loss_mean_z": float(test_sums["loss_mean_z"]) / n_test,
        "test_bce_mean_z": float(test_sums["bce_mean_z"]) / n_test,
        "train_examples": int(train_sums["examples"]),
        "steps": int(state.step),
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds if epoch == 1 else 0.0,
    }
    if not all(math.isfinite(record[k]) for k in ("train_loss", "test_loss")):
      raise FloatingPointError(f"epoch {epoch}: non-finite loss (train {record['train_loss']}, "
                               f"test {record['test_loss']})")
    print(f"====> Epoch: {epoch} Average loss: {record['train_loss']:.4f}")
    print(f"====> Test set loss: {record['test_loss']:.4f}")
    with open(workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    records.append(record)
    if config.save_images:
      comparison, samples = jax.device_get(
          images_c(state.params, test_u8_NxD[:num_shown], jax.random.fold_in(rng_images, epoch)))
      images.save_png(workdir / f"reconstruction_{epoch}.png",
                      images.image_grid(comparison.reshape(-1, *image_hw), nrow=8))
      images.save_png(workdir / f"sample_{epoch}.png",
                      images.image_grid(samples.reshape(-1, *image_hw), nrow=8))
  return state, records
