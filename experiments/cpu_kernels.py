"""Is the compiled epoch at the best matmul kernels this CPU has? Per shape, per kernel path.

Run (about 5 minutes on 2 cores):
  .venv/bin/python -m experiments.cpu_kernels
  .venv/bin/python -m experiments.cpu_kernels --json experiments/results/cpu_kernels/cpu_kernels.json
  .venv/bin/python -m experiments.cpu_kernels --report cpu_kernels.json   # a saved run's tables

One run measures, each XLA path in a fresh process (XLA_FLAGS are read when the backend
starts): XLA's own kernels, XNNPACK (--xla_cpu_use_xnnpack=true) and oneDNN
(--xla_cpu_experimental_onednn_custom_call=true), with torch.mm (the machine's threads) and
numpy's BLAS as outside references.
- Kernels: every matmul of one training step (forward, weight gradients, input gradients
  but not the data's), its shape from the model's parameters and its orientation as the
  step's program holds it (weight gradients x^T @ g, input gradients g @ W^T, operands as
  stored), for the reference (784-400-20, batch 128) and Burda et al.'s one-layer model
  (784-200-200-50, batch 20). Each shape runs 16 times, on 16 different left operands and one
  right operand, inside one program (XLA) or loop (torch, numpy, transposes as views); best
  of 5, microseconds per product. The bound: the sum of each shape's fastest path x its
  count x steps per epoch.
- Epochs: the compiled epoch (median s of epochs 2..N) of both configs under each XLA path,
  the default ``train`` command (reference) and PyTorch with preloaded tensors.
Ratios printed: default ``train`` s/epoch over the reference's kernel bound and PyTorch
preloaded over default ``train``; the Burda epoch over its bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

from experiments.clock import best_seconds
from vae_jax import cpu_kernels

PATHS = ("xla", "xnnpack", "onednn")
REPEATS = 16


def config_of(name: str):
  """The reference config, or Burda et al.'s one-layer k = 1 cell (batch 20), quiet."""
  from vae_jax.configs import default, iwae_1layer

  config = default.get_config() if name == "reference" else iwae_1layer.get_config("vae,1,8")
  config.run.update(progress=False, tensorboard=False, save_images=False)
  return config


def step_matmuls(config) -> list[dict]:
  """Every matmul of one training step: {'m', 'k', 'n', 'layout', 'count', 'what'}, an
  (m, k) x (k, n) product as the dot_general in the step's jaxpr holds it: 'nn' a forward
  x_BxI @ W_IxO; 'tn' a weight gradient x^T @ g (a stored k x m); 'nt' an input gradient
  g @ W^T (b stored n x k). JAX writes some weight gradients as g^T @ x: they are listed so."""
  import jax
  import jax.numpy as jnp

  from vae_jax import group as group_lib, objectives, step as step_lib

  batch = config.optim.batch_size
  splits = {
    s: (np.zeros((batch, 28, 28, 1), np.uint8), np.zeros(batch, np.int64))
    for s in ("train", "test")
  }
  group = group_lib.make_group(config, splits)
  states, keys = group_lib.create_states(group)
  state, keys, hparams = (group_lib.unstack(t) for t in (states, keys, group.hparams))
  objective_fn = objectives.REGISTRY.get(config.objective.name).target.fn
  jaxpr = jax.make_jaxpr(
    lambda s, x: step_lib.train_step(s, x, keys["noise"], hparams, objective_fn=objective_fn)
  )(state, jnp.zeros((batch, 28, 28, 1), jnp.uint8))
  names = {"nn": "forward", "tn": "weight grad", "nt": "input grad", "tt": "product"}
  shapes: dict[tuple, dict] = {}
  for eqn in dot_generals(jaxpr.jaxpr):
    (lhs_c, rhs_c), batch_dims = eqn.params["dimension_numbers"]
    a, b = (v.aval.shape for v in eqn.invars)
    if batch_dims != ((), ()) or len(a) != 2 or len(b) != 2:
      raise ValueError(f"not a plain matmul: {eqn}")
    layout = ("t" if lhs_c == (0,) else "n") + ("t" if rhs_c == (1,) else "n")
    m, k, n = a[1 - lhs_c[0]], a[lhs_c[0]], b[1 - rhs_c[0]]
    entry = shapes.setdefault(
      (m, k, n, layout), {"m": m, "k": k, "n": n, "layout": layout, "count": 0, "what": []}
    )
    entry["count"] += 1
    entry["what"].append(f"{names[layout]} {m}x{n}")
  return list(shapes.values())


def dot_generals(jaxpr):
  """The dot_general equations of a jaxpr and of the jaxprs inside it."""
  from jax.extend import core

  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, list | tuple) else [param]:
        if isinstance(sub, core.ClosedJaxpr | core.Jaxpr):
          yield from dot_generals(getattr(sub, "jaxpr", sub))


def stored_shapes(s: dict) -> tuple[tuple[int, int], tuple[int, int]]:
  """The shapes of a product's operands as the step stores them (see step_matmuls)."""
  m, k, n, layout = s["m"], s["k"], s["n"], s["layout"]
  return ((k, m) if layout[0] == "t" else (m, k)), ((n, k) if layout[1] == "t" else (k, n))


def oriented(a, b, layout: str):
  """The operands as (m, k) and (k, n) views (numpy / torch: transposes are views)."""
  return (a.T if layout[0] == "t" else a), (b.T if layout[1] == "t" else b)


def time_xla(shapes) -> list[float]:
  """Microseconds per product of each shape through jit (REPEATS products in one program),
  as the dot_general the step's program holds for it."""
  import jax
  import jax.numpy as jnp

  out = []
  for s in shapes:
    (a_shape, b_shape), layout = stored_shapes(s), s["layout"]
    a = jax.random.normal(jax.random.key(0), (REPEATS, *a_shape), jnp.float32)
    b = jax.random.normal(jax.random.key(1), b_shape, jnp.float32)
    dims = (((0 if layout[0] == "t" else 1,), (1 if layout[1] == "t" else 0,)), ((), ()))
    products = jax.jit(
      lambda a, b, dims=dims: jax.lax.map(
        lambda a_: jax.lax.dot_general(a_, b, dims, precision="highest"), a
      )
    )
    out.append(best_seconds(lambda: products(a, b).block_until_ready()) / REPEATS * 1e6)
  return out


def time_torch_mm(shapes) -> list[float]:
  import torch

  out = []
  for s in shapes:
    (a_shape, b_shape), layout = stored_shapes(s), s["layout"]
    a_all, b_stored = torch.randn(REPEATS, *a_shape), torch.randn(*b_shape)
    pairs = [oriented(a_all[i], b_stored, layout) for i in range(REPEATS)]
    c = torch.empty(s["m"], s["n"])
    out.append(best_seconds(lambda: [torch.mm(a, b, out=c) for a, b in pairs]) / REPEATS * 1e6)
  return out


def time_numpy(shapes) -> list[float]:
  out = []
  rng = np.random.default_rng(0)
  for s in shapes:
    (a_shape, b_shape), layout = stored_shapes(s), s["layout"]
    a_all = rng.standard_normal((REPEATS, *a_shape), np.float32)
    b_stored = rng.standard_normal(b_shape, np.float32)
    pairs = [oriented(a_all[i], b_stored, layout) for i in range(REPEATS)]
    c = np.empty((s["m"], s["n"]), np.float32)
    out.append(best_seconds(lambda: [np.matmul(a, b, out=c) for a, b in pairs]) / REPEATS * 1e6)
  return out


def time_epoch(name: str, num_epochs: int) -> dict:
  """The compiled epoch of config name: seconds of each epoch."""
  from experiments.timing import reference_programs, time_epochs

  programs, states, keys, compile_seconds = reference_programs(config_of(name))
  seconds, _ = time_epochs(programs, states, keys, num_epochs)
  return {"epoch_seconds": seconds, "compile_seconds": compile_seconds}


def worker(what: str, num_epochs: int) -> dict:
  """One measurement in this process (its XLA_FLAGS set by the parent)."""
  from experiments import timing

  if what == "kernels":
    return {name: time_xla(step_matmuls(config_of(name))) for name in ("reference", "burda")}
  if what == "outside":
    import torch

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for name in ("reference", "burda"):
      shapes = step_matmuls(config_of(name))
      out[name] = {"torch": time_torch_mm(shapes), "numpy": time_numpy(shapes)}
    return out
  if what.startswith("epoch_"):
    return time_epoch(what.removeprefix("epoch_"), num_epochs)
  if what == "train":
    return timing.time_train_command(config_of("reference"), num_epochs)
  if what == "torch_preloaded":
    return timing.time_torch("preloaded", num_epochs)
  if what == "shapes":
    return {name: step_matmuls(config_of(name)) for name in ("reference", "burda")}
  raise ValueError(what)


def measure(what: str, path: str = "xla", num_epochs: int = 2) -> dict:
  """worker(what) in a fresh process on kernel path `path` (its XLA flag, or none)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if f not in cpu_kernels.FLAGS.values()]
  env["XLA_FLAGS"] = " ".join(
    flags + ([cpu_kernels.FLAGS[path]] if path in cpu_kernels.FLAGS else [])
  )
  print(f"measuring {what} ({path}) ...", file=sys.stderr, flush=True)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.cpu_kernels",
      "--worker",
      what,
      "--epochs",
      str(num_epochs),
    ],
    capture_output=True,
    text=True,
    env=env,
  )
  if proc.returncode:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def steps_per_epoch(name: str, num_train: int = 60_000) -> int:
  return math.ceil(num_train / config_of(name).optim.batch_size)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--epochs", type=int, default=3, help="epochs per compiled-epoch path (median of 2..N)"
  )
  parser.add_argument("--json", help="also write every number to this JSON file")
  parser.add_argument(
    "--parts",
    nargs="+",
    choices=("kernels", "epochs", "train", "torch"),
    default=["kernels", "epochs", "train", "torch"],
    help="what to measure (default all; a loaded machine: epochs alone, more epochs)",
  )
  parser.add_argument(
    "--report", metavar="JSON", help="measure nothing: print the tables of a saved --json run"
  )
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.epochs)))
    return 0
  if args.report:
    with open(args.report) as f:
      report(json.load(f))
    return 0
  results = measure_all(args.parts, args.epochs)
  report(results)
  if args.json:
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0


def measure_all(parts: list[str], num_epochs: int) -> dict[str, Any]:
  """Every measurement of `parts`, each in a fresh process, and the machine that ran them."""
  import jax
  import jaxlib

  info = cpu_kernels.cpu_info()
  wanted = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
  )
  cpu_flags = [f for f in wanted if f in info["flags"].split()]
  skipped: dict[str, Any] = {"error": "not measured (--parts)"}
  shapes = measure("shapes")
  kernels = {p: measure("kernels", p) if "kernels" in parts else skipped for p in PATHS}
  outside = measure("outside") if "kernels" in parts else skipped
  epochs = {
    f"{name}_{p}": measure(f"epoch_{name}", p, num_epochs) if "epochs" in parts else skipped
    for name in ("reference", "burda")
    for p in PATHS
  }
  train = measure("train", "xla", num_epochs) if "train" in parts else skipped
  torch_pre = measure("torch_preloaded", "xla", 2) if "torch" in parts else skipped
  return {
    "machine": {
      **info,
      "cpu_flags": cpu_flags,
      "cores": os.cpu_count(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
    },
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "auto": list(cpu_kernels.resolve("auto")),
    "shapes": shapes,
    "kernels": kernels,
    "outside": outside,
    "epochs": epochs,
    "train": train,
    "torch_preloaded": torch_pre,
  }


def report(results: dict[str, Any]) -> None:
  """Prints the tables of one run's measurements and adds their 'bounds' and 'ratios'."""
  machine, shapes, kernels = results["machine"], results["shapes"], results["kernels"]
  outside, epochs = results["outside"], results["epochs"]
  train, torch_pre = results["train"], results["torch_preloaded"]
  print(
    f"\nMachine: {machine['model']} ({machine['vendor']}), {machine['cores']} cores, flags "
    f"{' '.join(machine['cpu_flags'])}; jax {machine['jax']}"
    + (f", jaxlib {machine['jaxlib']}" if "jaxlib" in machine else "")
    + (f", XLA_FLAGS={results['xla_flags']}" if results.get("xla_flags") else "")
    + (f"; torch threads {outside['torch_threads']}" if "torch_threads" in outside else "")
  )
  if "auto" in results:  # Runs saved before it was recorded have none.
    print(f"run.cpu_kernels=auto chooses here: {results['auto'][0]} ({results['auto'][1]})")
  median = lambda run: (
    statistics.median(run["epoch_seconds"][1:]) if "epoch_seconds" in run else None
  )
  results["bounds"] = {}
  for name in ("reference", "burda"):
    if "error" in shapes:
      print(f"shapes: {shapes['error']}")
      break
    if "error" in kernels["xla"]:
      break
    rows: dict[str, Any] = {p: kernels[p].get(name) for p in PATHS}  # None: not measured.
    rows.update({o: outside.get(name, {}).get(o) for o in ("torch", "numpy")})
    steps = steps_per_epoch(name)
    batch = config_of(name).optim.batch_size
    print(
      f"\n{name} (batch {batch}, {steps} steps per epoch): us per product, best of 5 of {REPEATS}"
    )
    columns = [c for c in rows if rows[c]]
    print("| m x k x n | layout | count | what | " + " | ".join(columns) + " | best |")
    print("| --- | --- | ---: | --- | " + " | ".join("---:" for _ in columns) + " | --- |")
    totals = {c: 0.0 for c in columns}
    best_total = 0.0
    for i, s in enumerate(shapes[name]):
      times: dict[str, float] = {c: rows[c][i] for c in columns}
      best = min(times, key=times.__getitem__)
      best_total += times[best] * s["count"]
      for c in columns:
        totals[c] += times[c] * s["count"]
      print(
        f"| {s['m']}x{s['k']}x{s['n']} | {s['layout']} | {s['count']} | {', '.join(s['what'])} | "
        + " | ".join(f"{times[c]:.1f}" for c in columns)
        + f" | {best} |"
      )
    print(
      "| per step | | | | "
      + " | ".join(f"{totals[c]:,.0f}" for c in columns)
      + f" | {best_total:,.0f} |"
    )
    print(
      "| x steps (s) | | | | "
      + " | ".join(f"{totals[c] * steps / 1e6:.3f}" for c in columns)
      + f" | {best_total * steps / 1e6:.3f} |"
    )
    results["bounds"][name] = {
      "per_path_seconds": {c: totals[c] * steps / 1e6 for c in columns},
      "best_seconds": best_total * steps / 1e6,
    }
  print("\nWhole compiled epoch, s: median (fastest) of epochs 2..N, per XLA kernel path:")
  print("| config | " + " | ".join(PATHS) + " | kernel bound (best per shape) |")
  print("| --- | " + " | ".join("---:" for _ in PATHS) + " | ---: |")
  fastest = lambda run: min(run["epoch_seconds"][1:])
  for name in ("reference", "burda"):
    cells = [
      f"{median(epochs[f'{name}_{p}']):.3f} ({fastest(epochs[f'{name}_{p}']):.3f})"
      if median(epochs[f"{name}_{p}"])
      else epochs[f"{name}_{p}"].get("error", "")
      for p in PATHS
    ]
    bound = results["bounds"].get(name, {}).get("best_seconds")
    print(f"| {name} | " + " | ".join(cells) + (f" | {bound:.3f} |" if bound else " | |"))
  train_s, torch_s = median(train), median(torch_pre)
  bound = results["bounds"].get("reference", {}).get("best_seconds")
  if train_s and bound:
    print(
      f"\nDefault `train` (reference): {train_s:.3f} s/epoch = {train_s / bound:.2f}x the kernel "
      f"bound ({bound:.3f} s)"
      + (
        f"; PyTorch preloaded {torch_s:.3f} s/epoch = {torch_s / train_s:.2f}x slower"
        if torch_s
        else f"; PyTorch: {torch_pre.get('error')}"
      )
    )
    results["ratios"] = {
      "train_over_bound": train_s / bound,
      "torch_preloaded_over_train": torch_s / train_s if torch_s else None,
    }
  burda_s, burda_bound = (
    median(epochs["burda_xla"]),
    results["bounds"].get("burda", {}).get("best_seconds"),
  )
  if burda_s and burda_bound:
    print(
      f"Burda 1-layer k=1 compiled epoch (xla): {burda_s:.3f} s = {burda_s / burda_bound:.2f}x its "
      f"kernel bound ({burda_bound:.3f} s)"
    )


if __name__ == "__main__":
  sys.exit(main())
