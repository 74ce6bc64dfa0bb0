"""K models in one compiled program: jax.vmap over the train state and the hyper-parameters.

Every model has its own seed (init, data order, noise, evaluation keys, split as
train_and_evaluate splits them), and its own value of each hyper-parameter that keeps the
array shapes: beta, learning rate (optax.inject_hyperparams, so it lives in the optimizer
state), KL warm-up length in epochs and dynamic binarization on/off. Shape-changing
factors (latent_dim, hidden_dim, ...) come from the shared config: one group per shape,
each compiled once. The data are shared; each model gathers its own batches from them.
With several devices the model axis is sharded across them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax import checkpoint, train

# Per-model hyper-parameters and their dtypes (the model axis is axis 0 of each array).
HPARAMS = {"seed": np.int32, "beta": np.float32, "learning_rate": np.float32,
           "kl_warmup_epochs": np.int32, "binarize": np.bool_}


class HparamError(ValueError):
  """Per-model hyper-parameters that cannot be used; the message names the key."""


def check_hparams(hparams: dict[str, Any]) -> dict[str, np.ndarray]:
  """Arrays of equal length K, one per HPARAMS key; missing keys take the config's value."""
  unknown = sorted(set(hparams) - set(HPARAMS))
  if unknown:
    raise HparamError(f"unknown per-model hyper-parameter(s) {', '.join(unknown)}; "
                      f"expected some of {', '.join(HPARAMS)}")
  sizes = {k: len(v) for k, v in hparams.items()}
  if len(set(sizes.values())) != 1:
    raise HparamError(f"per-model hyper-parameters differ in length: {sizes}")
  return {k: np.asarray(v, HPARAMS[k]) for k, v in hparams.items()}


def complete(config: ml_collections.ConfigDict, hparams: dict[str, Any]) -> dict[str, np.ndarray]:
  """All HPARAMS for K models: given values, else the config's (binarize: False)."""
  hparams = check_hparams(hparams)
  k = len(next(iter(hparams.values())))
  defaults = {"seed": config.seed, "beta": config.beta, "learning_rate": config.learning_rate,
              "kl_warmup_epochs": 0, "binarize": False}
  return {name: hparams.get(name, np.full(k, defaults[name], dtype)) for name, dtype in HPARAMS.items()}


def create_states(config, hparams: dict[str, np.ndarray], input_dim: int = 784):
  """(states, keys): the K train states and run keys, stacked on axis 0."""
  model = train.make_model(config, input_dim)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)

  def one(seed, learning_rate):
    rng_init, *rngs = jax.random.split(jax.random.key(seed), 1 + len(train.KEY_NAMES))
    params = model.init(rng_init, jnp.zeros((1, input_dim), jnp.float32))["params"]
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # The learning rate lives in the optimizer state, so each model carries its own.
    opt_state = state.opt_state._replace(
        hyperparams={**state.opt_state.hyperparams, "learning_rate": learning_rate})
    return (state.replace(opt_state=opt_state, step=jnp.zeros((), jnp.int32)),
            dict(zip(train.KEY_NAMES, rngs)))

  return jax.jit(jax.vmap(one))(hparams["seed"], hparams["learning_rate"])


def _model_sharding(num_models: int) -> NamedSharding | None:
  """Shards axis 0 (models) over all devices when their count divides K; else None."""
  n = jax.device_count()
  if n == 1 or num_models % n:
    return None
  return NamedSharding(Mesh(np.asarray(jax.devices()), ("models",)), P("models"))


def train_many(config: ml_collections.ConfigDict, hparams: dict[str, Any], splits,
               num_epochs: int | None = None, workdir: str | Path | None = None
               ) -> tuple[Any, list[list[dict[str, float]]]]:
  """Trains K models at once; returns (stacked states, records[k] = model k's epochs).

  Records hold train_loss (weighted, as the optimizer saw it), test_loss, test_bce,
  test_kl (one-sample, beta = 1: the ELBO) and train_seconds (of the whole K-model epoch).
  ``workdir``: checkpoint the stacked states there after every epoch and resume from the
  latest one (the same hyper-parameters and config required), as single runs do.
  """
  train.validate_config(config)
  hp = complete(config, hparams)
  num_models = len(hp["seed"])
  num_epochs = config.num_epochs if num_epochs is None else num_epochs
  (x_train_u8, _), (x_test_u8, _) = splits["train"], splits["test"]
  n_train, n_test = len(x_train_u8), len(x_test_u8)
  input_dim = int(np.prod(x_train_u8.shape[1:]))
  train_u8_NxD = jnp.asarray(x_train_u8.reshape(n_train, input_dim))
  test_u8_NxD = jnp.asarray(x_test_u8.reshape(n_test, input_dim))
  steps_per_epoch = -(-n_train // config.batch_size)

  states, keys = create_states(config, hp, input_dim)
  records = [[] for _ in range(num_models)]
  meta = {"config": config.to_dict(), "hparams": {k: v.tolist() for k, v in hp.items()}}
  if workdir is not None and checkpoint.has_checkpoints(workdir):
    states, keys, records = _resume(workdir, meta, states, keys)
  beta = jnp.asarray(hp["beta"])
  # Options no model uses stay Python constants: nothing of them is traced or computed.
  warmup = hp["kl_warmup_epochs"] * steps_per_epoch
  options = {"kl_warmup_steps": jnp.asarray(warmup) if warmup.any() else 0,
             "binarize": jnp.asarray(hp["binarize"]) if hp["binarize"].any() else False}
  per_model = {k: v for k, v in options.items() if not isinstance(v, (int, bool))}
  constant = {k: v for k, v in options.items() if k not in per_model}
  objective = train.Objective.from_config(config)
  sharding = _model_sharding(num_models)
  if sharding is not None:
    states, keys, beta, per_model = jax.device_put((states, keys, beta, per_model), sharding)

  def epoch_one(state, keys, beta, per_model, epoch):
    return train.train_epoch(state, train_u8_NxD, epoch, keys["shuffle"], keys["noise"], beta,
                             batch_size=config.batch_size, objective=objective, **per_model,
                             **constant)

  def evaluate_one(params, apply_fn, key, epoch):
    return train.evaluate(params, apply_fn, test_u8_NxD, jax.random.fold_in(key, epoch),
                          config.eval_batch_size, objective=objective)

  epoch_all = jax.jit(jax.vmap(epoch_one, in_axes=(0, 0, 0, 0, None)), donate_argnums=0)
  evaluate_all = jax.jit(jax.vmap(evaluate_one, in_axes=(0, None, 0, None)), static_argnums=1)
  mngr = checkpoint.manager(workdir, keep=1) if workdir is not None else None
  for epoch in range(len(records[0]) + 1, num_epochs + 1):
    t0 = time.perf_counter()
    states, sums = epoch_all(states, keys, beta, per_model, jnp.int32(epoch))
    sums = jax.device_get(sums)
    seconds = time.perf_counter() - t0
    test = jax.device_get(evaluate_all(states.params, states.apply_fn, keys["eval"], epoch))
    for k in range(num_models):
      records[k].append({
          "epoch": epoch, "train_loss": float(sums["loss"][k]) / n_train,
          "test_loss": float(test["loss"][k]) / n_test, "test_bce": float(test["bce"][k]) / n_test,
          "test_kl": float(test["kl"][k]) / n_test, "train_seconds": seconds})
    if mngr is not None:
      mean_test = float(np.mean([r[-1]["test_loss"] for r in records]))
      checkpoint.save(mngr, epoch, train.state_tree(states, keys), {
          **meta, "model_records": records, "records": [{"epoch": epoch, "test_loss": mean_test}]})
  if mngr is not None:
    mngr.close()
  return states, records


def _resume(workdir, meta: dict[str, Any], states, keys):
  """(states, keys, records) from the latest checkpoint of a K-model run in workdir."""
  with checkpoint.manager(workdir, read_only=True) as mngr:
    epoch = checkpoint.select(mngr, "latest")
    saved = checkpoint.read_meta(mngr, epoch)
    differences = checkpoint.config_differences(
        {**saved["config"], **saved["hparams"]}, {**meta["config"], **meta["hparams"]})
    if differences:
      raise checkpoint.CheckpointError(
          f"{workdir}: its checkpoint was made with other settings ({'; '.join(differences)})")
    tree = checkpoint.restore(mngr, epoch, train.state_tree(states, keys), saved)
  states, keys = train.from_state_tree(states, tree)
  return states, keys, saved["model_records"]


def unstack(states, k: int):
  """Model k's state out of the stacked states."""
  return jax.tree.map(lambda a: a[k], states)
