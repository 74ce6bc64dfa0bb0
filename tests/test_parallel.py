"""Data parallelism over simulated CPU devices, two real processes on localhost, bf16.

Simulated devices need XLA_FLAGS before jax starts, so those runs are subprocesses.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import k_model_run, make_model, train_args

from vae_jax import train
from vae_jax.registry import ConfigError

EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def run_python(code: str, env: dict, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                        capture_output=True,
                        text=True, timeout=600, env=env, cwd=os.path.dirname(__file__))


def assert_params_close(a, b):
  """rtol 1e-5, and atol 1e-6 = 0.1 % of one Adam step (lr 1e-3).

  The device count changes the order of the gradient sums; where a gradient is near zero,
  Adam's m / sqrt(v) turns that last-bit difference into up to a fraction of a step.
  """
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_eight_devices_match_one_device(tmp_path):
  result = run_python("""
      import json, sys, tempfile
      import jax, numpy as np
      from conftest import synthetic_split
      from vae_jax import train
      from vae_jax.configs import default
      assert jax.device_count() == 8
      # 328 = 2 x 128 + 72: every batch, the partial one too, splits over 8 devices.
      splits = {"train": synthetic_split(328, 0), "test": synthetic_split(96, 1)}
      out = {}
      for n in (1, 8):
        config = default.get_config()
        config.optim.num_epochs, config.run.progress, config.run.save_images, config.run.num_devices = 2, False, False, n
        state, records = train.train_and_evaluate(config, tempfile.mkdtemp() + "/run", splits)
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
        train.train_and_evaluate(config, tempfile.mkdtemp() + "/run", splits)
      except ConfigError as e:
        out["refusal"] = str(e)
      print(json.dumps(out))
      """, EIGHT_DEVICES, tmp_path)
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


def test_two_processes_on_localhost_match_one_process(trained_run, session_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vae_jax", *train_args(workdir, session_idx_dir),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in (0, 1)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err
  assert "====> Epoch: 2" in outputs[0][0] and "====>" not in outputs[1][0]  # Process 0 reports.
  two, one = ([json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
              for w in (workdir, trained_run))
  for r2, r1 in zip(two, one, strict=True):
    for key in ("train_loss", "test_loss", "test_loss_mean_z"):
      np.testing.assert_allclose(r2[key], r1[key], rtol=1e-5)
  _, state2, _, meta2 = train.restore_run(workdir)
  _, state1, _, _ = train.restore_run(trained_run)
  assert meta2["epoch"] == 2 and meta2["config"]["run.num_devices"] == 0
  assert_params_close(state2.params, state1.params)


def test_bfloat16_computes_in_bf16_and_keeps_float32_parameters(small_config, small_splits,
                                                                 tmp_path):
  small_config.optim.num_epochs, small_config.run.save_images = 1, False
  small_config.model.compute_dtype = "bfloat16"
  state, records = train.train_and_evaluate(small_config, tmp_path / "bf16", small_splits)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  jaxpr = str(jax.make_jaxpr(state.apply_fn)({"params": state.params},
                                             jnp.zeros((2, 28, 28, 1)), jax.random.key(0)))
  assert "bf16[2,400]" in jaxpr  # The layers compute in bfloat16.
  logits, mu, logvar = state.apply_fn({"params": state.params}, jnp.zeros((2, 28, 28, 1)),
                                      jax.random.key(0))
  assert logits.dtype == mu.dtype == logvar.dtype == jnp.float32  # The loss sees float32.
  small_config.model.compute_dtype = "float32"
  _, records32 = train.train_and_evaluate(small_config, tmp_path / "f32", small_splits)
  assert records[0]["train_loss"] != records32[0]["train_loss"]
  np.testing.assert_allclose(records[0]["train_loss"], records32[0]["train_loss"], rtol=1e-2)


def test_unknown_compute_dtype_is_refused():
  with pytest.raises(ConfigError,
                     match="config.model.compute_dtype='float16': expected one of float32, bfloat16"):
    make_model({"model.compute_dtype": "float16"})


def test_vmapped_models_are_sharded_over_devices(tmp_path):
  result = run_python("""
      import json
      import jax, numpy as np
      from conftest import synthetic_split
      from conftest import k_model_run
      states, records = k_model_run()
      kernel = states.params["decoder"]["logits"]["kernel"]
      print(json.dumps({"shards": len(kernel.sharding.device_set), "spec": str(kernel.sharding.spec),
                        "test_loss": [r[-1]["test_loss"] for r in records]}))
      """, {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["shards"] == 4 and "models" in out["spec"]  # One model per device.
  _, records = k_model_run()
  np.testing.assert_allclose(out["test_loss"], [r[-1]["test_loss"] for r in records], rtol=1e-5)
