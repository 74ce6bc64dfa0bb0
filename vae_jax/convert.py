"""Weights between the PyTorch reference and vae_jax, as plain numpy (no torch import).

The reference names its layers fc1 (784->400), fc21 (mu), fc22 (logvar), fc3 (20->400) and
fc4 (400->784); nn.Linear stores ``weight`` as (out, in) and computes x @ W.T + b, Flax's
Dense stores ``kernel`` as (in, out) and computes x @ K + b. So K = W.T, biases as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# torch layer name -> (flax module, flax layer)
TORCH_TO_FLAX = {
  "fc1": ("encoder", "hidden"),
  "fc21": ("encoder", "mu"),
  "fc22": ("encoder", "logvar"),
  "fc3": ("decoder", "hidden"),
  "fc4": ("decoder", "logits"),
}


def flax_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Flax params from a reference state_dict (values as numpy arrays: ``t.numpy()``)."""
  expected = {f"{name}.{p}" for name in TORCH_TO_FLAX for p in ("weight", "bias")}
  if set(state_dict) != expected:
    raise KeyError(f"state_dict keys {sorted(state_dict)}: expected {sorted(expected)}")
  params: dict = {"encoder": {}, "decoder": {}}
  for name, (module, layer) in TORCH_TO_FLAX.items():
    params[module][layer] = {
      "kernel": np.asarray(state_dict[f"{name}.weight"]).T.copy(),
      "bias": np.asarray(state_dict[f"{name}.bias"]).copy(),
    }
  return params


def torch_from_flax(params: Mapping) -> dict[str, np.ndarray]:
  """A reference state_dict (numpy values; ``torch.from_numpy`` each) from Flax params."""
  state = {}
  for name, (module, layer) in TORCH_TO_FLAX.items():
    state[f"{name}.weight"] = np.asarray(params[module][layer]["kernel"]).T.copy()
    state[f"{name}.bias"] = np.asarray(params[module][layer]["bias"]).copy()
  return state
