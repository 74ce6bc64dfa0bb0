"""Where does a compiled epoch spend its time? A JAX-profiler trace, summed per XLA op.

Run:
  .venv/bin/python -m experiments.profile_epoch            # reference config, bundled MNIST
  .venv/bin/python -m experiments.profile_epoch --top 25 --trace-dir runs/trace

Traces one compiled epoch (after a warm-up epoch) with jax.profiler, sums the duration of
every XLA op over its 469 calls and prints the top ops with their shapes and the JAX
operation they come from, then the totals by kind: matmuls (dot, and YNNPACK fusions
that contain a dot), the rest (elementwise fusions: loss, ReLU, Adam; copies; the loop).
The matmul line gives the GFLOP/s the matmul kernels reach on their own, which bounds how
fast the epoch can be. The trace stays in --trace-dir for TensorBoard / xprof.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from experiments import timing
from vae_jax.configs import default


def op_durations(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """(seconds, calls) per XLA op name: on a CPU summed over the XLA worker threads of the
  host plane; on an accelerator over the 'XLA Ops' lines of its device planes."""
  path = sorted(Path(trace_dir).rglob("*.xplane.pb"))[-1]
  profile = jax.profiler.ProfileData.from_file(str(path))
  cpu = jax.default_backend() == "cpu"
  planes = (
    [profile.find_plane_with_name("/host:CPU")]
    if cpu
    else [p for p in profile.planes if p.name.startswith("/device:")]
  )
  seconds: collections.Counter[str]
  calls: collections.Counter[str]
  seconds, calls = collections.Counter(), collections.Counter()
  for line in (line for plane in planes if plane is not None for line in plane.lines):
    if not (line.name.startswith("tf_XLA") if cpu else line.name == "XLA Ops"):
      continue
    for event in line.events:
      if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener")):
        continue  # Wrappers around the ops, not ops.
      seconds[event.name] += event.duration_ns / 1e9
      calls[event.name] += 1
  return seconds, calls


def hlo_ops(hlo: str) -> dict[str, dict[str, Any]]:
  """For each op of the optimized HLO: its result shape, source op_name and whether it is a matmul."""
  computations = {
    m.group(1): m.group(2)
    for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)
  }
  ops = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$", hlo, re.M):
    name, shape, opcode, rest = m.groups()
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = computations.get(called.group(1), "") if called else ""
    source = re.search(r'op_name="([^"]+)"', rest)
    ops[name] = {
      "shape": shape,
      "opcode": opcode,
      "matmul": opcode == "dot" or " dot(" in body or "convolution(" in body,
      "source": source.group(1).split("closed_call/")[-1] if source else "",
    }
  return ops


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temp dir)")
  args = parser.parse_args()

  config = default.get_config()
  programs, states, keys, _ = timing.reference_programs(config)
  states, sums = programs.train_epoch(states, keys, 1)
  jax.block_until_ready(sums)  # Warm-up epoch.
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="vae_jax_trace_")
  with jax.profiler.trace(trace_dir):
    t0 = time.perf_counter()
    states, sums = programs.train_epoch(states, keys, 2)
    jax.block_until_ready(sums)
    wall = time.perf_counter() - t0
  seconds, calls = op_durations(trace_dir)
  ops: dict[str, dict[str, Any]] = {}
  for compiled in (*programs.chunks.values(), programs.finish, programs.order):
    ops.update(hlo_ops(compiled.as_text()))
  flops = timing.epoch_matmul_flops(config, programs.train_data.shape[0])

  print(f"Traced epoch: {wall:.3f} s wall (profiling adds some). Trace: {trace_dir}\n")
  print("| op | kind | calls | seconds | share | result | from |")
  print("| --- | --- | ---: | ---: | ---: | --- | --- |")
  total = sum(seconds.values())
  if not total:
    print(
      f"No XLA op events in the trace ({jax.default_backend()}); open {trace_dir} in "
      "TensorBoard's profiler or xprof instead."
    )
    return 0
  for name, s in seconds.most_common(args.top):
    op = ops.get(name, {"shape": "?", "matmul": False, "source": ""})
    print(
      f"| {name} | {'matmul' if op['matmul'] else 'other'} | {calls[name]} | {s:.3f} | "
      f"{s / total:.0%} | {op['shape']} | {op['source'][:60]} |"
    )
  matmul = sum(s for name, s in seconds.items() if ops.get(name, {}).get("matmul"))
  print(
    f"\nSum of op times: {total:.3f} s; matmuls {matmul:.3f} s ({matmul / total:.0%}), "
    f"everything else {total - matmul:.3f} s."
  )
  if matmul:
    print(
      f"Matmul kernels alone: {flops / 1e9:.1f} GFLOP in {matmul:.3f} s = "
      f"{flops / matmul / 1e9:.1f} GFLOP/s; the float32 peak measured now: "
      f"{max(timing.matmul_peak_gflops().values()):.1f} GFLOP/s."
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
