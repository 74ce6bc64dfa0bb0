"""The epoch as a few compiled programs, dispatched ahead so the host never stalls the device.

An epoch is: its batch order, ``progress_chunks`` scans over the full batches, the last
partial batch with the epoch's sums. JAX dispatches them asynchronously: while the host
waits for chunk i to report progress, chunk i + 1 is already queued, so progress costs the
device nothing (no host callback inside the compiled loop). Every program runs K models
(step.over_models: batched with vmap, or one after another with lax.map); with the 'loop'
strategy the single-model programs run once per model, dispatched in turn, which is exactly
K single runs. Each program is compiled once, ahead of the first epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vae_jax import objectives, step as step_lib
from vae_jax.group import Group


def chunk_bounds(num_steps: int, chunks: int) -> list[tuple[int, int]]:
  """[(start, stop)] cutting num_steps into at most ``chunks`` near-equal runs (two lengths at most)."""
  size = -(-num_steps // max(1, min(chunks, num_steps))) if num_steps else 0
  return [(a, min(a + size, num_steps)) for a in range(0, num_steps, size)] if size else []


def _compile(jitted, debug: bool, *args):
  """jitted, compiled ahead of time (debug: left to jit, which jax_debug_nans checks)."""
  return jitted if debug else jitted.lower(*args).compile()


def _models(tree, k: int):
  """Models k..k+1 of a K-stacked tree, keeping the model axis."""
  return jax.tree.map(lambda a: a[k : k + 1], tree)


def _concat(trees: list):
  return trees[0] if len(trees) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *trees)


def _steps(order, a: int, b: int):
  """Steps a..b of a K-stacked epoch order (its indices, and labels where it has them)."""
  return jax.tree.map(lambda t: t[:, a:b], order)


class Programs:
  """The compiled epoch, evaluation and image programs of a group; built once per run."""

  chunks: dict[int, Any]  # The compiled chunk program of each chunk length.

  def __init__(
    self,
    group: Group,
    states,
    keys,
    train_data,
    test_data,
    mesh=None,
    chunks: int = 1,
    debug: bool = False,
    train_labels=None,
  ):
    """train_data: the training images; test_data: the test images, or (images, labels)
    for a conditional model, whose training labels are train_labels (int32)."""
    settings = group.settings
    strategy = group.strategy()
    # 'loop': the one-model programs, run for each model in turn.
    self.per_model = group.num_models > 1 and strategy == "loop"
    num_models = 1 if self.per_model else group.num_models
    if self.per_model:
      states, keys = _models(states, 0), _models(keys, 0)
    over = functools.partial(step_lib.over_models, num_models=num_models, strategy=strategy)
    self.num_models = group.num_models
    self.hparams, self.eval_hparams = group.hparams, group.eval_hparams
    hparams, eval_hparams = (
      (_models(group.hparams, 0), _models(group.eval_hparams, 0))
      if self.per_model
      else (group.hparams, group.eval_hparams)
    )
    self.train_data, self.test_data, self.train_labels = train_data, test_data, train_labels
    batch = settings.optim.batch_size
    conditional = group.model.conditional
    num_classes = getattr(group.model, "num_classes", 0) if conditional else 0
    step_fn = functools.partial(
      step_lib.train_step,
      objective_fn=objectives.with_labels(group.objective, conditional),
      binarize=settings.data.binarize,
      mesh=mesh,
    )
    order = over(
      lambda keys, shared: step_lib.epoch_order(
        keys,
        shared[0],
        num_examples=group.num_train,
        batch_size=batch,
        labels_N=shared[1],
        per_class=settings.data.labels_per_class,
        num_classes=num_classes,
      )
    )
    run = over(functools.partial(step_lib.run_steps, step_fn=step_fn))
    last = over(functools.partial(step_lib.last_step, step_fn=step_fn))
    sums = over(step_lib.epoch_sums)

    def chunk(states, keys, hparams, idx, data):
      return run((states, keys, hparams, idx), data)

    def finish(states, keys, hparams, idx_rest, data, chunk_outs):
      rest = None
      if jax.tree.leaves(idx_rest)[0].shape[1]:
        states, rest = last((states, keys, hparams, idx_rest), data)
      return states, sums((chunk_outs, rest), None)

    epoch1 = jnp.int32(1)
    self.order = _compile(jax.jit(order), debug, keys, (epoch1, train_labels))
    full, rest = self.order(keys, (epoch1, train_labels))
    self.bounds = chunk_bounds(jax.tree.leaves(full)[0].shape[1], chunks)
    self.chunks, outs = {}, []
    for a, b in self.bounds:
      if b - a not in self.chunks:
        self.chunks[b - a] = _compile(
          jax.jit(chunk, donate_argnums=0),
          debug,
          states,
          keys,
          hparams,
          _steps(full, a, b),
          train_data,
        )
      outs.append(
        self.chunks[b - a].out_info[1]
        if not debug
        else jax.eval_shape(chunk, states, keys, hparams, _steps(full, a, b), train_data)[1]
      )
    self.finish = _compile(
      jax.jit(finish, donate_argnums=0), debug, states, keys, hparams, rest, train_data, outs
    )

    def evaluate(params, eval_keys, hparams, data, epoch):
      def one(per_model, shared):
        params, key, hp = per_model
        return step_lib.evaluate(
          params,
          group.model.apply,
          shared,
          jax.random.fold_in(key, epoch),
          batch_size=settings.optim.eval_batch_size,
          objective_fn=objectives.with_labels(group.eval_objective, conditional),
          hparams=hp,
          mesh=mesh,
        )

      return over(one)((params, eval_keys, hparams), data)

    def images(params, image_keys, x_8, epoch):
      return over(
        lambda per_model, x: step_lib.epoch_images(
          per_model[0],
          group.model.apply,
          x,
          jax.random.fold_in(per_model[1], epoch),
          group.model.latent_dim,
          num_classes=num_classes,
        )
      )((params, image_keys), x_8)

    self.evaluate = _compile(
      jax.jit(evaluate), debug, states.params, keys["eval"], eval_hparams, test_data, epoch1
    )
    self.num_shown = min(8, jax.tree.leaves(test_data)[0].shape[0])
    self.images = _compile(
      jax.jit(images), debug, states.params, keys["images"], self.shown(), epoch1
    )

  def shown(self):
    """The test images (and labels) the epoch's reconstruction grid shows."""
    return jax.tree.map(lambda t: t[: self.num_shown], self.test_data)

  def _each_model(self, fn: Callable, *trees):
    """fn on all models at once, or (loop strategy) on each model's slice, concatenated."""
    if not self.per_model:
      return fn(*trees)
    outs = [fn(*(_models(t, k) for t in trees)) for k in range(self.num_models)]
    return _concat(outs)

  def train_epoch(self, states, keys, epoch: int, on_chunk: Callable[[int], None] | None = None):
    """(states, sums): one epoch of every model; on_chunk(steps done) as chunks finish."""
    epoch = jnp.int32(epoch)

    def one(states, keys, hparams):
      full, rest = self.order(keys, (epoch, self.train_labels))
      outs = []
      for a, b in self.bounds:
        states, out = self.chunks[b - a](states, keys, hparams, _steps(full, a, b), self.train_data)
        if on_chunk is not None and outs:  # Read the previous chunk while this one runs.
          on_chunk(int(jax.device_get(outs[-1][1][0, -1])))
        outs.append(out)
      return self.finish(states, keys, hparams, rest, self.train_data, outs)

    return self._each_model(one, states, keys, self.hparams)

  def test_sums(self, states, keys, epoch: int) -> dict[str, Any]:
    epoch = jnp.int32(epoch)
    return self._each_model(
      lambda params, eval_keys, hparams: self.evaluate(
        params, eval_keys, hparams, self.test_data, epoch
      ),
      states.params,
      keys["eval"],
      self.eval_hparams,
    )

  def grids(self, states, keys, epoch: int):
    epoch = jnp.int32(epoch)
    return self._each_model(
      lambda params, image_keys: self.images(params, image_keys, self.shown(), epoch),
      states.params,
      keys["images"],
    )
