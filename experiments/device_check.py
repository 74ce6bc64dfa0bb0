"""One command that measures what an accelerator does with this codebase, in one process.

    python -m experiments.device_check [--out runs/device_check.json] [--tiny]

Sections, each written to the JSON as soon as it ends (a timeout keeps what finished) and
printed as a markdown table: the machine (backend, device, versions, precision, flags);
matmul TFLOP/s (bf16, f32 default, f32 highest); the reference epoch (s/epoch, us/step) at
f32-highest, f32-default and bf16, with progress off and on (the train command's chunked
epoch), and as a Python loop of jitted steps; examples/s at three batch sizes; K vmapped
models against sequential runs (model-epochs/s, device peak memory); the train command end
to end with images and checkpoints (wall vs train seconds, synchronous and background
saves); the IWAE K-sample estimator at two batch sizes; determinism (two fresh processes:
same state SHA-256?). ``--tiny`` shrinks every size so the whole check runs on a CPU in
about a minute (the CI test). It needs only the packages the project imports: on a host with
other versions it prints the versions it ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import vae_jax
from experiments import timing
from vae_jax import config as config_lib, data, evaluate, group as group_lib
from vae_jax.configs import default

FULL = {
  "matmul_n": 8192,
  "epochs": 5,
  "train_examples": 0,
  "batches": (128, 1024, 8192),
  "models": (1, 16, 64, 256),
  "sequential": 16,
  "model_epochs": 2,
  "train_epochs": 3,
  "iwae": (5000, 1000, (16, 100)),
  "determinism_epochs": 2,
}
TINY = {
  "matmul_n": 256,
  "epochs": 2,
  "train_examples": 512,
  "batches": (16, 128),
  "models": (1, 2),
  "sequential": 2,
  "model_epochs": 2,
  "train_epochs": 3,
  "iwae": (64, 32, (4, 16)),
  "determinism_epochs": 1,
}
PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "chex",
  "numpy",
  "tensorflow-datasets",
)


def _config(sizes, **overrides):
  """The reference config on the check's data, with dotted overrides."""
  config = default.get_config()
  config.data.train_examples = sizes["train_examples"]
  config.data.test_examples = sizes["train_examples"] // 4
  config.run.progress = False
  flat = {**config_lib.flatten(config), **overrides}
  return config_lib.from_flat(flat)


def machine(sizes) -> dict:
  device = jax.local_devices()[0]
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return {
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "devices": jax.device_count(),
    "python": sys.version.split()[0],
    "versions": versions,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "matmul_precision": "highest (runs)",
  }


def matmul(sizes) -> dict:
  n = sizes["matmul_n"]
  return {
    "n": n,
    "tflops": {
      "bf16": timing.matmul_tflops(n, jnp.bfloat16, "default"),
      "f32_default": timing.matmul_tflops(n, jnp.float32, "default"),
      "f32_highest": timing.matmul_tflops(n, jnp.float32, "highest"),
    },
  }


def _epoch_row(config, sizes, precision: str, chunks: int = 1, progress: bool = False) -> dict:
  with jax.default_matmul_precision(precision):
    programs, states, keys, compile_s = timing.reference_programs(config, chunks=chunks)
    seconds, losses = timing.time_epochs(programs, states, keys, sizes["epochs"], progress)
  steps = -(-programs.train_data.shape[0] // config.optim.batch_size)
  epoch_s = float(np.median(seconds[1:]))
  return {
    "epoch_s": epoch_s,
    "us_per_step": epoch_s / steps * 1e6,
    "compile_s": compile_s,
    "train_loss": losses[-1],
  }


def reference_epoch(sizes) -> dict:
  config = _config(sizes)
  bf16 = _config(sizes, **{"model.compute_dtype": "bfloat16"})
  rows = {
    "f32_highest": _epoch_row(config, sizes, "highest"),
    "f32_default": _epoch_row(config, sizes, "default"),
    "bf16": _epoch_row(bf16, sizes, "highest"),
    "f32_highest_progress_on": _epoch_row(config, sizes, "highest", chunks=10, progress=True),
  }
  with jax.default_matmul_precision("highest"):
    loop = timing.time_loop(config, sizes["epochs"])
  loop_s = float(np.median(loop["epoch_seconds"][1:]))
  steps = -(-len(data.load_data(config)["train"][0]) // config.optim.batch_size)
  rows["loop_of_jitted_steps"] = {
    "epoch_s": loop_s,
    "us_per_step": loop_s / steps * 1e6,
    "compile_s": loop["compile_seconds"],
    "train_loss": loop["train_loss"][-1],
  }
  off, on = rows["f32_highest"]["epoch_s"], rows["f32_highest_progress_on"]["epoch_s"]
  return {"rows": rows, "progress_cost": on / off - 1}


def batch_sizes(sizes) -> dict:
  rows = {}
  for batch in sizes["batches"]:
    config = _config(sizes, **{"optim.batch_size": batch})
    with jax.default_matmul_precision("highest"):
      programs, states, keys, _ = timing.reference_programs(config)
      seconds, _ = timing.time_epochs(programs, states, keys, sizes["epochs"])
    rows[batch] = {
      "epoch_s": float(np.median(seconds[1:])),
      "examples_per_s": programs.train_data.shape[0] / float(np.median(seconds[1:])),
    }
  return {"rows": rows}


def vmapped_models(sizes) -> dict:
  with jax.default_matmul_precision("highest"):
    out = timing.time_models(
      list(sizes["models"]),
      sizes["model_epochs"],
      strategies=("vmap",),
      base_config=_config(sizes),
      sequential=sizes["sequential"],
    )
  epochs = out["epochs_timed"]
  one = out["in_program_seconds"]["vmap_1"]
  rows = {
    k: {
      "seconds": out["in_program_seconds"][f"vmap_{k}"],
      "model_epochs_per_s": k * epochs / out["in_program_seconds"][f"vmap_{k}"],
      "vs_one_model": out["in_program_seconds"][f"vmap_{k}"] / one,
      "peak_mib": (out["peak_bytes"][f"vmap_{k}"] or 0) / 2**20 or None,
    }
    for k in sizes["models"]
  }
  seq = sizes["sequential"]
  return {
    "rows": rows,
    "epochs_timed": epochs,
    "sequential_runs": seq,
    "sequential_seconds": out["sequential_seconds"].get(
      seq, out["sequential_seconds"][max(k for k in out["sequential_seconds"])]
    ),
    "sequential_model_epochs_per_s": seq * epochs / max(out["sequential_seconds"].values()),
  }


def end_to_end(sizes) -> dict:
  rows = {}
  with tempfile.TemporaryDirectory() as workdir:  # Warms up what a first run loads once.
    vae_jax.train(_config(sizes, **{"optim.num_epochs": 1}), workdir)
  for name, background in (("checkpoints_sync", False), ("checkpoints_async", True)):
    config = _config(
      sizes,
      **{
        "optim.num_epochs": sizes["train_epochs"],
        "run.save_images": True,
        "run.tensorboard": True,
        "run.async_checkpoints": background,
      },
    )
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      _, records = vae_jax.train(config, workdir)
      wall = time.perf_counter() - t0
    compile_s = records[0]["compile_seconds"]
    train_s = sum(r["train_seconds"] for r in records)
    rows[name] = {
      "wall_s": wall,
      "compile_s": compile_s,
      "train_s": train_s,
      "other_s_per_epoch": (wall - compile_s - train_s) / len(records),
    }
  return {"epochs": sizes["train_epochs"], "rows": rows}


def iwae(sizes) -> dict:
  num_samples, num_images, batches = sizes["iwae"]
  config = _config(sizes)
  splits = data.load_data(config)
  group = group_lib.make_group(config, splits)
  states, _ = group_lib.create_states(group)
  params = group_lib.unstack(states).params
  x = evaluate.binarize(splits["test"][0][:num_images].reshape(num_images, -1), jax.random.key(0))
  x = x.reshape(num_images, *splits["test"][0].shape[1:])
  rows = {}
  for batch in batches:
    with jax.default_matmul_precision("highest"):
      evaluate.iwae_log_likelihood(
        params, group.model.apply, x[:batch], jax.random.key(1), num_samples, batch_size=batch
      )  # Compiles.
      t0 = time.perf_counter()
      out = evaluate.iwae_log_likelihood(
        params, group.model.apply, x, jax.random.key(1), num_samples, batch_size=batch
      )
      seconds = time.perf_counter() - t0
    rows[batch] = {
      "seconds": seconds,
      "images_per_s": num_images / seconds,
      "mean_iwae": float(np.mean(out["iwae"])),
    }
  return {"num_samples": num_samples, "images": num_images, "rows": rows}


def determinism(sizes) -> dict:
  """Two fresh processes train the same config: the same state, bit for bit?"""
  digests = []
  for _ in range(2):
    with tempfile.TemporaryDirectory() as workdir:
      args = [
        sys.executable,
        "-m",
        "vae_jax",
        "train",
        f"--workdir={workdir}/run",
        f"--config.optim.num_epochs={sizes['determinism_epochs']}",
        f"--config.data.train_examples={sizes['train_examples']}",
        f"--config.data.test_examples={sizes['train_examples'] // 4}",
        "--config.run.progress=False",
        "--config.run.save_images=False",
        "--config.run.tensorboard=False",
      ]
      result = subprocess.run(args, capture_output=True, text=True, timeout=600)
      if result.returncode:
        raise RuntimeError(f"train exited {result.returncode}: {result.stderr[-500:]}")
      from vae_jax import checkpoint

      _, state, keys, _ = vae_jax.load_run(Path(workdir) / "run")
      digests.append(checkpoint.tree_sha256(group_lib.state_tree(state, keys)))
  return {"sha256": digests, "equal": digests[0] == digests[1]}


SECTIONS = {
  "machine": machine,
  "matmul": matmul,
  "reference_epoch": reference_epoch,
  "batch_sizes": batch_sizes,
  "vmapped_models": vmapped_models,
  "end_to_end": end_to_end,
  "iwae": iwae,
  "determinism": determinism,
}


def tables(section: str, out: dict) -> str:
  """The section's markdown table."""
  if "error" in out:
    return f"**{section}**: failed: {out['error']}"
  f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
  if section == "machine":
    versions = ", ".join(f"{k} {v}" for k, v in out["versions"].items())
    return (
      f"**Machine**: {out['backend']} ({out['device_kind']} x {out['devices']}), python "
      f"{out['python']}, {versions}; XLA_FLAGS={out['xla_flags'] or '(none)'}"
    )
  if section == "matmul":
    return (
      "| matmul "
      + f"{out['n']}^2 | TFLOP/s |\n| --- | ---: |\n"
      + "\n".join(f"| {k} | {f(v, 2)} |" for k, v in out["tflops"].items())
    )
  if section == "reference_epoch":
    return (
      "| reference epoch | s/epoch | us/step | compile s | train loss |\n| --- | ---: | ---: | ---: | ---: |\n"
      + "\n".join(
        f"| {k} | {f(r['epoch_s'], 4)} | {f(r['us_per_step'], 1)} | {f(r['compile_s'], 1)} "
        f"| {f(r['train_loss'], 4)} |"
        for k, r in out["rows"].items()
      )
      + f"\n\nProgress on costs {out['progress_cost']:+.1%} of the epoch."
    )
  if section == "batch_sizes":
    return "| batch | s/epoch | examples/s |\n| ---: | ---: | ---: |\n" + "\n".join(
      f"| {b} | {f(r['epoch_s'], 4)} | {r['examples_per_s']:,.0f} |" for b, r in out["rows"].items()
    )
  if section == "vmapped_models":
    return (
      "| vmapped K | seconds | model-epochs/s | vs K = 1 | device peak MiB |\n| ---: | ---: | ---: | ---: | ---: |\n"
      + "\n".join(
        f"| {k} | {f(r['seconds'])} | {f(r['model_epochs_per_s'], 1)} | "
        f"{f(r['vs_one_model'], 2)}x | {f(r['peak_mib'], 0)} |"
        for k, r in out["rows"].items()
      )
      + f"\n| {out['sequential_runs']} sequential | {f(out['sequential_seconds'])} | "
      f"{f(out['sequential_model_epochs_per_s'], 1)} | | |"
    )
  if section == "end_to_end":
    return (
      f"| train, {out['epochs']} epochs | wall s | compile s | train s | other s/epoch |\n| --- | ---: | ---: | ---: | ---: |\n"
      + "\n".join(
        f"| {k} | {f(r['wall_s'], 2)} | {f(r['compile_s'], 2)} | {f(r['train_s'], 2)} | "
        f"{f(r['other_s_per_epoch'])} |"
        for k, r in out["rows"].items()
      )
    )
  if section == "iwae":
    return (
      f"| IWAE K = {out['num_samples']}, {out['images']} images: batch | seconds | images/s | mean bound |\n| ---: | ---: | ---: | ---: |\n"
      + "\n".join(
        f"| {b} | {f(r['seconds'], 2)} | {f(r['images_per_s'], 1)} | {f(r['mean_iwae'], 2)} |"
        for b, r in out["rows"].items()
      )
    )
  if section == "determinism":
    return f"**Determinism**: two fresh processes, state SHA-256 equal: {out['equal']}"
  return json.dumps(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
  parser.add_argument("--out", type=Path, default=Path("runs") / "device_check.json")
  parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU in about a minute)")
  parser.add_argument(
    "--sections",
    default=",".join(SECTIONS),
    help=f"comma-separated subset of {', '.join(SECTIONS)}",
  )
  args = parser.parse_args(argv)
  names = args.sections.split(",")
  unknown = sorted(set(names) - set(SECTIONS))
  if unknown:
    parser.error(
      f"--sections: unknown {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}"
    )
  sizes = TINY if args.tiny else FULL
  args.out.parent.mkdir(parents=True, exist_ok=True)
  results = {"sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
  for name in names:
    t0 = time.perf_counter()
    try:
      out = SECTIONS[name](sizes)
    except Exception as e:  # A section that fails is reported; the others still run.
      traceback.print_exc()
      out = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    out["section_seconds"] = time.perf_counter() - t0
    results[name] = out
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, args.out)
    print(tables(name, out) + f"\n\n({name}: {out['section_seconds']:.1f} s)\n", flush=True)
  return 1 if any("error" in results[n] for n in names) else 0


if __name__ == "__main__":
  sys.exit(main())
