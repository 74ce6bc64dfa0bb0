"""Multi-process (multi-host) runs: jax.distributed from flags or the environment.

Every process runs the same command; process 0 alone writes metrics, config, images and
checkpoint manifests (orbax coordinates the checkpoint itself across processes). On CPU
the collectives go through gloo, so several processes on one machine (127.0.0.1) work too.
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the run's processes; False (nothing done) when no coordinator is given.

  Unset arguments come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
  """
  env = os.environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    return False
  try:
    num = num_processes if num_processes is not None else int(env.get("JAX_NUM_PROCESSES", ""))
    index = process_id if process_id is not None else int(env.get("JAX_PROCESS_ID", ""))
  except ValueError:
    raise ValueError("--coordinator_address needs --num_processes and --process_id (or "
                     "JAX_NUM_PROCESSES and JAX_PROCESS_ID) as integers") from None
  if num < 1 or not 0 <= index < num:
    raise ValueError(f"--process_id={index} with --num_processes={num}: expected "
                     "0 <= process_id < num_processes")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes=num, process_id=index)
  return True


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to do with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
