"""Data parallelism over simulated CPU devices, two real processes on localhost, bf16.

Simulated devices need XLA_FLAGS before jax starts, so those runs are subprocesses.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import k_model_run, make_model, train_args

from vae_jax import training
from vae_jax.registry import ConfigError


def with_devices(count: int) -> dict:
  """This process's environment with count simulated CPU devices (the suite's XLA_FLAGS kept)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}"}


EIGHT_DEVICES = with_devices(8)


def run_python(code: str, env: dict, *args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
    cwd=os.path.dirname(__file__),
  )


def assert_params_close(a, b):
  """rtol 1e-5, and atol 1e-6 = 0.1 % of one Adam step (lr 1e-3).

  The device count changes the order of the gradient sums; where a gradient is near zero,
  Adam's m / sqrt(v) turns that last-bit difference into up to a fraction of a step.
  """
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_eight_devices_match_one_device(tmp_path):
  result = run_python(
    """
      import json, sys, tempfile
      import jax, numpy as np
      from conftest import synthetic_split
      from vae_jax import training
      from vae_jax.configs import default
      assert jax.device_count() == 8
      # 328 = 2 x 128 + 72: every batch, the partial one too, splits over 8 devices.
      splits = {"train": synthetic_split(328, 0), "test": synthetic_split(96, 1)}
      out = {}
      for n in (1, 8):
        config = default.get_config()
        config.optim.num_epochs, config.run.progress, config.run.save_images, config.run.num_devices = 2, False, False, n
        state, records = training.train_and_evaluate(config, tempfile.mkdtemp() + "/run", splits)
        leaves = {str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves(state.params))}
        np.savez(f"{sys.argv[1]}/params_{n}.npz", **leaves)
        out[n] = {"records": records,
                  "devices": len(state.params["decoder"]["logits"]["kernel"].devices())}
      from vae_jax import group, parallel
      from vae_jax.epoch import Programs
      from vae_jax.registry import ConfigError
      mesh = parallel.make_mesh(8)
      g = group.make_group(config, splits)
      states, keys = parallel.replicate(group.create_states(g), mesh)
      x_train, x_test = parallel.replicate((splits["train"][0], splits["test"][0]), mesh)
      programs = Programs(g, states, keys, x_train, x_test, mesh)
      hlo = next(iter(programs.chunks.values())).as_text()
      out["all_reduce"] = "all-reduce" in hlo
      config.optim.batch_size = 100
      try:
        training.train_and_evaluate(config, tempfile.mkdtemp() + "/run", splits)
      except ConfigError as e:
        out["refusal"] = str(e)
      print(json.dumps(out))
      """,
    EIGHT_DEVICES,
    tmp_path,
  )
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["1"]["devices"] == 1 and out["8"]["devices"] == 8
  assert out["all_reduce"]  # Gradients are summed across devices: the batch really is split.
  for r1, r8 in zip(out["1"]["records"], out["8"]["records"]):
    for key in ("train_loss", "test_loss", "test_bce", "test_kl"):
      np.testing.assert_allclose(r8[key], r1[key], rtol=1e-5)
  one, eight = (dict(np.load(tmp_path / f"params_{n}.npz")) for n in (1, 8))
  assert len(one) == 10
  assert_params_close(eight, one)
  assert "config.optim.batch_size=100: not divisible by the 8 devices" in out["refusal"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, session_idx_dir):
  """(workdir, outputs) of a finished two-process CLI run (4 CPU devices each) sharing one
  workdir: process 0 writes it."""
  workdir = tmp_path_factory.mktemp("two") / "run"
  return workdir, _finish(_two_processes([workdir, workdir], session_idx_dir))


@pytest.mark.xdist_group("two_process_run")  # One worker runs its fixture once.
def test_two_processes_on_localhost_match_one_process(trained_run, two_process_run):
  workdir, outputs = two_process_run
  assert "====> Epoch: 2" in outputs[0][0] and "====>" not in outputs[1][0]  # Process 0 reports.
  two, one = (
    [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
    for w in (workdir, trained_run)
  )
  for r2, r1 in zip(two, one, strict=True):
    for key in ("train_loss", "test_loss", "test_loss_mean_z"):
      np.testing.assert_allclose(r2[key], r1[key], rtol=1e-5)
  _, state2, _, meta2 = training.restore_run(workdir)
  _, state1, _, _ = training.restore_run(trained_run)
  assert meta2["epoch"] == 2 and meta2["config"]["run.num_devices"] == 0
  assert_params_close(state2.params, state1.params)


def _two_processes(workdirs, idx_dir, *extra, pause=None):
  """Starts a two-process CLI run (4 CPU devices each) with one workdir per process;
  pause=(point, marker): process 0 runs tests/pause_run.py and stops there."""
  port = _free_port()
  env = with_devices(4)
  procs = []
  for i, workdir in enumerate(workdirs):
    args = [
      *train_args(workdir, idx_dir, *extra),
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    ]
    head = (
      [os.path.join(os.path.dirname(__file__), "pause_run.py"), *pause, "--"]
      if pause and i == 0
      else ["-m", "vae_jax"]
    )
    procs.append(
      subprocess.Popen(
        [sys.executable, *head, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
      )
    )
  return procs


def _finish(procs):
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err
  return outputs


@pytest.mark.xdist_group("two_process_run")  # One worker runs its fixture once.
def test_two_processes_without_a_shared_disk_killed_and_resumed_bit_identical(
  session_idx_dir, two_process_run, tmp_path
):
  """Process 0 alone writes (process 1's workdir stays absent); after a SIGKILL of both
  once epoch 1 is checkpointed, the same commands resume from process 0's checkpoint, sent
  to process 1, and end bit-identical to an uninterrupted two-process run (the module's,
  whose processes shared a disk)."""
  from test_checkpoint import assert_trees_equal_bitwise, metrics, saved_arrays

  whole = two_process_run[0]  # Uninterrupted; its disk shared, which changes no number.
  killed = [tmp_path / "killed0", tmp_path / "killed1"]
  marker = tmp_path / "paused"
  procs = _two_processes(killed, session_idx_dir, pause=("after_checkpoint_1", str(marker)))
  deadline = time.monotonic() + 300
  while not marker.exists():
    assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].stderr.read()
    time.sleep(0.2)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.communicate()
  assert [r["epoch"] for r in metrics(killed[0])] in ([], [1])
  outputs = _finish(_two_processes(killed, session_idx_dir))
  assert "Resuming from" in outputs[0][0] and "(epoch 1)" in outputs[0][0]
  assert not killed[1].exists()  # Process 1 wrote nothing.
  assert_trees_equal_bitwise(saved_arrays(killed[0]), saved_arrays(whole))
  assert metrics(killed[0]) == metrics(whole)


def test_each_process_holds_only_its_rows_of_the_train_set():
  port = _free_port()
  code = """
      import json, sys
      import numpy as np
      from vae_jax import distributed, parallel
      distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
      mesh = parallel.make_mesh(0)
      x = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3)  # 10 rows: padded to 16 over 8 devices.
      calls = []
      real = parallel.jax.make_array_from_process_local_data
      parallel.jax.make_array_from_process_local_data = lambda s, local, shape: (
          calls.append(local.copy()), real(s, local, shape))[-1]
      arr = parallel.shard_rows(x, mesh)
      print(json.dumps({"shape": list(arr.shape), "local": calls[0].tolist(),
                        "shards": sorted([s.index[0].start, s.data.shape[0]]
                                         for s in arr.addressable_shards)}))
      """
  env = with_devices(4)
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(code), f"127.0.0.1:{port}", str(i)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=os.path.dirname(__file__),
    )
    for i in (0, 1)
  ]
  outs = [json.loads(out.strip().splitlines()[-1]) for out, _ in _finish(procs)]
  x = np.arange(30, dtype=np.uint8).reshape(10, 3)
  assert outs[0]["shape"] == outs[1]["shape"] == [16, 3]
  np.testing.assert_array_equal(outs[0]["local"], x[:8])  # Process 0: rows 0..7 only.
  np.testing.assert_array_equal(outs[1]["local"], np.concatenate([x[8:], np.zeros((6, 3))]))
  assert outs[0]["shards"] == [[0, 2], [2, 2], [4, 2], [6, 2]]  # Two rows per device.
  assert outs[1]["shards"] == [[8, 2], [10, 2], [12, 2], [14, 2]]


def test_bfloat16_computes_in_bf16_and_keeps_float32_parameters(
  small_config, small_splits, tmp_path
):
  small_config.optim.num_epochs, small_config.run.save_images = 1, False
  small_config.model.compute_dtype = "bfloat16"
  state, records = training.train_and_evaluate(small_config, tmp_path / "bf16", small_splits)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  jaxpr = str(
    jax.make_jaxpr(state.apply_fn)(
      {"params": state.params}, jnp.zeros((2, 28, 28, 1)), jax.random.key(0)
    )
  )
  assert "bf16[2,400]" in jaxpr  # The layers compute in bfloat16.
  logits, mu, logvar = state.apply_fn(
    {"params": state.params}, jnp.zeros((2, 28, 28, 1)), jax.random.key(0)
  )
  assert logits.dtype == mu.dtype == logvar.dtype == jnp.float32  # The loss sees float32.
  small_config.model.compute_dtype = "float32"
  _, records32 = training.train_and_evaluate(small_config, tmp_path / "f32", small_splits)
  assert records[0]["train_loss"] != records32[0]["train_loss"]
  np.testing.assert_allclose(records[0]["train_loss"], records32[0]["train_loss"], rtol=1e-2)


def test_unknown_compute_dtype_is_refused():
  with pytest.raises(
    ConfigError, match="config.model.compute_dtype='float16': expected one of float32, bfloat16"
  ):
    make_model({"model.compute_dtype": "float16"})


def test_vmapped_models_are_sharded_over_devices(tmp_path):
  result = run_python(
    """
      import json
      import jax, numpy as np
      from conftest import synthetic_split
      from conftest import k_model_run
      states, records = k_model_run()
      kernel = states.params["decoder"]["logits"]["kernel"]
      print(json.dumps({"shards": len(kernel.sharding.device_set), "spec": str(kernel.sharding.spec),
                        "test_loss": [r[-1]["test_loss"] for r in records]}))
      """,
    with_devices(4),
  )
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["shards"] == 4 and "models" in out["spec"]  # One model per device.
  _, records = k_model_run()
  np.testing.assert_allclose(out["test_loss"], [r[-1]["test_loss"] for r in records], rtol=1e-5)


@pytest.mark.xdist_group("two_process_run")
def test_grouped_tests_share_one_worker(request):
  """Under ``-n`` with the suite's ``--dist=loadgroup``, a grouped test's id carries its group
  (the grouping that lets the two-process tests share one run; pytest 9.2 broke it)."""
  if not hasattr(request.config, "workerinput"):
    pytest.skip("not under pytest-xdist")
  assert request.node.nodeid.endswith("@two_process_run"), request.node.nodeid
