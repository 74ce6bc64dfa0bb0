"""What a measurement ran on: the one description every experiment and benchmark prints."""

from __future__ import annotations

import os
import platform

import jax


def describe_machine() -> dict:
  """CPU model, cores, backend, devices, jax / jaxlib versions and XLA_FLAGS."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import jaxlib

  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def machine_line() -> str:
  """One line: CPU model, cores, jax version and backend."""
  info = describe_machine()
  return f"{info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']})"
