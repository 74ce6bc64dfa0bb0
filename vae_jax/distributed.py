"""Multi-process (multi-host) runs: jax.distributed from flags, the environment or the cluster.

Every process runs the same command; process 0 alone reads and writes the workdir (metrics,
config, images, checkpoints), so the processes need no shared disk: process 0 decides
whether to resume and sends the restored state to the others (``broadcast_json``,
``broadcast_tree``). On CPU the collectives go through gloo, so several processes on one
machine (127.0.0.1) work too.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

# Where jax.distributed.initialize() finds the coordinator, process count and index itself.
CLUSTER_HINTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def cluster_detected(env=None) -> bool:
  """Whether the environment is a multi-process job that jax configures on its own (Slurm
  or Open MPI with more than one task, a TPU pod slice with more than one worker)."""
  env = os.environ if env is None else env
  sizes = [env.get("SLURM_NTASKS", "1"), env.get("OMPI_COMM_WORLD_SIZE", "1")]
  many_tasks = any(s.isdigit() and int(s) > 1 for s in sizes)
  return many_tasks or "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Joins the run's processes; False (nothing done) for a single-process run.

  Unset arguments come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  without an address, a cluster jax knows (``cluster_detected``) gets the no-argument
  ``jax.distributed.initialize()``, which reads them from the platform.
  """
  env = os.environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    if not cluster_detected(env):
      return False
    jax.distributed.initialize()
    return True
  try:
    num = num_processes if num_processes is not None else int(env.get("JAX_NUM_PROCESSES", ""))
    index = process_id if process_id is not None else int(env.get("JAX_PROCESS_ID", ""))
  except ValueError:
    raise ValueError(
      "--coordinator_address needs --num_processes and --process_id (or "
      "JAX_NUM_PROCESSES and JAX_PROCESS_ID) as integers"
    ) from None
  if num < 1 or not 0 <= index < num:
    raise ValueError(
      f"--process_id={index} with --num_processes={num}: expected 0 <= process_id < num_processes"
    )
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


def broadcast_json(value):
  """Process 0's JSON-able value, on every process (itself with one process)."""
  if jax.process_count() == 1:
    return value
  data = (
    np.frombuffer(json.dumps(value).encode(), np.uint8) if is_primary() else np.zeros(0, np.uint8)
  )
  size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
  padded = np.zeros(size, np.uint8)
  padded[: data.size] = data
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tobytes().decode())


def broadcast_tree(tree):
  """Process 0's numpy tree on every process; the others pass one of the same shapes."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def check_same(digest: str, what: str) -> None:
  """RuntimeError unless every process computed the same SHA-256 hex digest."""
  if jax.process_count() > 1:
    multihost_utils.assert_equal(
      np.frombuffer(bytes.fromhex(digest), np.uint8), f"{what} differs between processes"
    )
