"""Devices: the data-parallel mesh of a single run, and the model axis of K models."""

from __future__ import annotations

import os
from typing import cast

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax.registry import ConfigError


def describe_backend(matmul_precision: str) -> dict:
  """What computes a run's numbers: backend, device kind and count, versions, precision, flags."""
  import jaxlib

  device = jax.local_devices()[0]
  return {
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "matmul_precision": matmul_precision,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "compilation_cache": jax.config.jax_compilation_cache_dir or "",  # type: ignore[attr-defined]  # jax config flags: dynamic
  }


def configure_compilation_cache(env=None) -> str | None:
  """On an accelerator, compiled programs persist in a cache (VAE_JAX_COMPILATION_CACHE, default
  ~/.cache/vae_jax/xla; 'off': none), so a resumed process runs the very executables of the
  first one: XLA's GEMM autotuner picks kernels at compile time and may pick others in a fresh
  compile, which would break bit-identical resume. On a CPU (no autotuning; resume is tested
  bit-identical) nothing is cached. Call before the first compilation; returns the directory."""
  env = os.environ if env is None else env
  where = env.get("VAE_JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/vae_jax/xla"))
  if jax.default_backend() == "cpu" or where == "off" or jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]  # jax config flags: dynamic
    return jax.config.jax_compilation_cache_dir or None  # type: ignore[attr-defined]  # jax config flags: dynamic
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return where


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
    raise ConfigError(
      f"{what} needs about {needed / 2**30:,.1f} GiB, more than the "
      f"{available / 2**30:,.1f} GiB of {jax.default_backend()} memory available; "
      "ask for less"
    )


# Auto data parallelism keeps at least this many examples per device: splitting a smaller
# batch adds an all-reduce per step and saves little (not measured on an accelerator here).
MIN_DEVICE_BATCH = 256


def data_devices(num_devices: int, batch_size: int, per_device_batch_size: int = 0) -> int:
  """Devices on the data axis: num_devices, or (0) the auto rule of config.run.num_devices."""
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError(
      f"config.run.num_devices={num_devices}: only {available} devices "
      f"({jax.default_backend()}) are visible"
    )
  if num_devices:
    return num_devices
  if per_device_batch_size or jax.process_count() > 1:
    return available
  n = max(1, min(available, batch_size // MIN_DEVICE_BATCH))
  while batch_size % n:
    n -= 1
  return n


def make_mesh(num_devices: int = 0) -> Mesh | None:
  """A 1-D mesh ('data') over the first num_devices devices (0: all); None for one device.

  With None every array lives on the default device: the single-device path. All devices:
  jax.make_mesh, which orders them by the accelerator's topology.
  """
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError(
      f"config.run.num_devices={num_devices}: only {available} devices "
      f"({jax.default_backend()}) are visible"
    )
  n = num_devices or available
  if n == 1:
    return None
  auto = (jax.sharding.AxisType.Auto,)
  if n == available:
    return jax.make_mesh((n,), ("data",), axis_types=auto)
  return Mesh(np.asarray(jax.devices()[:n]), ("data",), axis_types=auto)


def shard_rows(x_N, mesh: Mesh | None):
  """x_N with its rows split over the mesh's data axis (zero rows pad it to a multiple of the
  axis): each device holds 1/D of the set, each process supplies only its own devices' rows
  (``jax.make_array_from_process_local_data``). Indexing it with global example numbers
  gives the same values as the whole array. mesh None: on the default device."""
  if mesh is None:
    return jax.device_put(x_N)
  sharding = NamedSharding(mesh, P("data"))
  rows = -(-x_N.shape[0] // mesh.size) * mesh.size
  global_shape = (rows, *x_N.shape[1:])
  starts = sorted(
    cast("tuple[slice, ...]", index)[0].start or 0
    for index in sharding.addressable_devices_indices_map(global_shape).values()
  )
  lo, hi = starts[0], starts[-1] + rows // mesh.size
  local = np.zeros((hi - lo, *x_N.shape[1:]), x_N.dtype)
  part = x_N[lo : min(hi, x_N.shape[0])]
  local[: len(part)] = part
  return jax.make_array_from_process_local_data(sharding, local, global_shape)


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


def shard_models(tree, num_models: int, num_devices: int = 0):
  """Axis 0 (models) sharded over the largest device count that divides K (at most
  num_devices; 0: all visible); one device: as it is."""
  n = min(num_devices or jax.device_count(), jax.device_count(), num_models)
  while num_models % n:
    n -= 1
  if n == 1:
    return tree
  return jax.device_put(
    tree, NamedSharding(Mesh(np.asarray(jax.devices()[:n]), ("models",)), P("models"))
  )
