"""Devices: the data-parallel mesh of a single run, and the model axis of K models."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax.registry import ConfigError


def describe_backend(matmul_precision: str) -> dict:
  """What computes a run's numbers: backend, device kind and count, versions, precision, flags."""
  import jaxlib
  device = jax.local_devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "devices": jax.device_count(), "processes": jax.process_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "matmul_precision": matmul_precision,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def available_bytes() -> int:
  """Memory a run may still use: free device memory on an accelerator, MemAvailable on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      return next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(needed: int, what: str) -> None:
  """ConfigError with the estimate when needed bytes exceed the available memory."""
  available = available_bytes()
  if needed > available:
    raise ConfigError(f"{what} needs about {needed / 2**30:,.1f} GiB, more than the "
                      f"{available / 2**30:,.1f} GiB of {jax.default_backend()} memory available; "
                      "ask for less")


def make_mesh(num_devices: int = 0) -> Mesh | None:
  """A 1-D mesh ('data') over the first num_devices devices (0: all); None for one device.

  With None every array lives on the default device: the single-device path.
  """
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError(f"config.run.num_devices={num_devices}: only {available} devices "
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


def shard_models(tree, num_models: int):
  """Axis 0 (models) sharded over all devices when their count divides K; else as it is."""
  n = jax.device_count()
  if n == 1 or num_models % n:
    return tree
  return jax.device_put(tree, NamedSharding(Mesh(np.asarray(jax.devices()), ("models",)), P("models")))
