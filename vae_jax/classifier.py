"""The classifiers a practitioner trains on few labels, to measure what augmentation buys.

Two networks: ``mlp`` (784-256-256-10, ReLU) and ``cnn`` (two 3x3 stride-2 convolutions of 16
and 32 channels, a Dense of 128, ReLU). ``train`` fits D classifiers at
once, one per draw of a labelled subset (a vmap: one compiled program), with Adam on
cross-entropy for a fixed number of steps; each step takes ``batch_size`` real examples
drawn with replacement, the classical transforms applied when asked (augmentation.
shift_rotate), and as many generated ones when a generated set is given. No validation set
and no early stopping: with 10 labels per class there is none to spare, so every recipe
trains the same number of steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.augmentation import shift_rotate


class MLP(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in (256, 256):
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(self.num_classes)(h)


class CNN(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = x_BxHxWxC
    for channels in (16, 32):  # Strided, not max-pooled: XLA CPU's pooling gradient is ~9x slower.
      h = nn.relu(nn.Conv(channels, (3, 3), strides=2)(h))
    h = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(h)


NETWORKS = {"mlp": MLP, "cnn": CNN}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one classifier trains: network, steps, real examples per step, Adam's rate, the
  classical transforms (on real and generated examples alike)."""

  network: str = "mlp"
  steps: int = 2000
  batch_size: int = 64
  learning_rate: float = 1e-3
  classical: bool = False


def _loss(params, module, x, y):
  logits = module.apply({"params": params}, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _step(carry, key, step, x_NxHxWxC, y_N, gen_x, gen_y, *, module, tx, recipe: Recipe):
  """One Adam step of one classifier; its batch from fold_in(key, step)."""
  params, opt_state = carry
  key = jax.random.fold_in(key, step)

  def batch(key, x, y):
    idx = jax.random.randint(key, (recipe.batch_size,), 0, x.shape[0])
    return x[idx], y[idx]

  x, y = batch(jax.random.fold_in(key, 0), x_NxHxWxC, y_N)
  if gen_x is not None:
    gx, gy = batch(jax.random.fold_in(key, 1), gen_x, gen_y)
    x, y = jnp.concatenate([x, gx]), jnp.concatenate([y, gy])
  if recipe.classical:
    x = shift_rotate(x, jax.random.fold_in(key, 2))
  grads = jax.grad(_loss)(params, module, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train(
  keys_D: jax.Array,
  x_DxNxHxWxC,
  y_DxN,
  recipe: Recipe,
  generated: tuple | None = None,
  num_classes: int = 10,
):
  """D classifiers' parameters (stacked), classifier d trained on draw d: x_DxNxHxWxC in
  [0, 1] and y_DxN int (or x_NxHxWxC and y_N: one set for all D, which then differ only in
  their keys); generated: (gen_x_DxMxHxWxC, gen_y_DxM) added to every step.

  The steps are dispatched from Python, each one compiled program for all D at once (the
  cnn: for one draw at a time): XLA's CPU convolutions run several times slower inside a
  compiled loop (lax.scan) than outside one, and batched over models (vmap) ~1.4x slower
  per model than one after another.
  """
  if recipe.network == "cnn" and len(keys_D) > 1:
    per_draw = [
      train(
        keys_D[d : d + 1],
        x_DxNxHxWxC[d : d + 1] if np.ndim(x_DxNxHxWxC) == 5 else x_DxNxHxWxC,
        y_DxN[d : d + 1] if np.ndim(x_DxNxHxWxC) == 5 else y_DxN,
        recipe,
        None if generated is None else tuple(g[d : d + 1] for g in generated),
        num_classes,
      )
      for d in range(len(keys_D))
    ]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *per_draw)
  module, tx = NETWORKS[recipe.network](num_classes), optax.adam(recipe.learning_rate)
  x, y = jnp.asarray(x_DxNxHxWxC, jnp.float32), jnp.asarray(y_DxN)
  real = 0 if x.ndim == 5 else None
  gen = 0 if generated is not None else None
  gen_x, gen_y = (None, None) if generated is None else map(jnp.asarray, generated)
  keys_init, keys_steps = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys_D)
  x_1 = x[(0,) * (x.ndim - 3)][None]
  params = jax.jit(jax.vmap(lambda k: module.init(k, x_1)["params"]))(keys_init)
  carry = (params, jax.jit(jax.vmap(tx.init))(params))
  step = jax.jit(
    jax.vmap(
      functools.partial(_step, module=module, tx=tx, recipe=recipe),
      in_axes=(0, 0, None, real, real, gen, gen),
    ),
    donate_argnums=0,
  )
  for s in range(recipe.steps):
    carry = step(carry, keys_steps, jnp.int32(s), x, y, gen_x, gen_y)
  return carry[0]


@functools.partial(jax.jit, static_argnames=("network", "num_classes"))
def _predict(params, x_BxHxWxC, network: str, num_classes: int):
  logits_BxC = NETWORKS[network](num_classes).apply({"params": params}, x_BxHxWxC)
  return jnp.argmax(cast(jax.Array, logits_BxC), -1)


def accuracy(
  params_D, network: str, x_NxHxWxC, y_N, num_classes: int = 10, chunk: int = 2000
) -> np.ndarray:
  """Test accuracy of each of the D classifiers (shape D)."""
  correct = 0
  for start in range(0, len(x_NxHxWxC), chunk):
    x = jnp.asarray(x_NxHxWxC[start : start + chunk], jnp.float32)
    pred_DxB = jax.vmap(lambda p: _predict(p, x, network, num_classes))(params_D)
    correct = correct + np.sum(np.asarray(pred_DxB) == y_N[start : start + chunk], axis=1)
  return np.asarray(correct) / len(x_NxHxWxC)
