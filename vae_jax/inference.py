"""Using a trained run: sample, reconstruct, encode and evaluate from its checkpoints.

Each function restores one checkpoint ('latest', 'best' or an epoch number) of a work
directory written by ``vae_jax.train``, compiles only the function it needs and
writes nothing but its own output file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import (
  api,
  checkpoint,
  config as config_lib,
  data,
  files,
  images,
  objectives,
  parallel,
  step,
)
from vae_jax.evaluate import collapse_warning, latent_diagnostics, posterior_codes
from vae_jax.group import run_context
from vae_jax.runs import open_run


def _load_split(run, split: str) -> tuple[np.ndarray, np.ndarray]:
  if split not in ("train", "test"):
    raise ValueError(f"split {split!r}: expected 'train' or 'test'")
  return data.load_data(run.settings.data)[split]


def _labels(run, labels: np.ndarray) -> np.ndarray | None:
  """A split's labels where the run's model takes them (conditional), else None."""
  return labels if step.model_of(run.state).conditional else None


def _check_out(out: str | Path, suffix: str) -> Path:
  out = Path(out)
  if out.suffix != suffix:
    raise ValueError(f"--out {out}: expected a {suffix} file name")
  if out.is_symlink():  # Dangling or not: never written through.
    raise ValueError(
      f"--out {out}: is a symbolic link; vae_jax writes only a file it creates or "
      "replaces: name the file itself"
    )
  if out.exists() and not out.is_dir() and not out.is_file():
    raise ValueError(f"--out {out}: exists and is not a regular file; choose another name")
  if out.is_dir():
    raise ValueError(f"--out {out}: is a directory; expected a {suffix} file name")
  if not out.parent.is_dir():
    raise ValueError(f"--out {out}: directory {out.parent} does not exist")
  return out


def _save_grid(out: Path, pixels_NxHxWxC: np.ndarray | jax.Array, nrow: int = 8):
  images.save_png(out, images.image_grid(np.asarray(pixels_NxHxWxC), nrow=nrow))


def sample(
  workdir, out, num: int = 64, seed: int = 0, which: str = "latest", label: int | None = None
) -> Path:
  """Decodes num draws z ~ N(0, I) (key = key(seed)) into a PNG grid, 8 per row; a
  conditional model's of class ``label`` (None: image i of class i mod C)."""
  out = _check_out(out, ".png")
  if num < 1:
    raise ValueError(f"--num {num}: expected >= 1")
  run = open_run(workdir, which)
  model = step.model_of(run.state)
  if label is not None and not model.conditional:
    raise ValueError(f"--label {label}: model {run.settings.model[0].name!r} is not conditional")
  if label is not None and not 0 <= label < model.num_classes:
    raise ValueError(f"--label {label}: expected a class in [0, {model.num_classes})")
  pixels = num * np.prod(run.image_shape)
  parallel.check_fits(int(pixels) * 4 * 2, f"--num {num} (images of float32 and the grid)")
  _save_grid(out, api.sample(run.state, num, jax.random.key(seed), label))
  return out


def reconstruct(workdir, out, num: int = 8, split: str = "test", which: str = "latest") -> Path:
  """The split's first num images (rows of 8) over their reconstructions at z = mu, as a PNG."""
  out = _check_out(out, ".png")
  run = open_run(workdir, which)
  state = run.state
  x_u8, labels = _load_split(run, split)
  if not 1 <= num <= len(x_u8):
    raise ValueError(f"--num {num}: expected 1 to {len(x_u8)} (the {split} split's size)")
  x_NxD = step.to_float(jnp.asarray(x_u8[:num]))
  given = {"labels": labels[:num]} if step.model_of(state).conditional else {}
  logits_NxD, _, _ = jax.jit(state.apply_fn)({"params": state.params}, x_NxD, None, **given)
  rows = []
  for start in range(0, num, 8):  # Originals and reconstructions alternate, 8 per row.
    recon = step.model_of(state).mean_image(logits_NxD[start : start + 8])
    rows += [x_NxD[start : start + 8], recon]
  _save_grid(out, jnp.concatenate(rows))
  return out


def encode(workdir, out, split: str = "test", which: str = "latest") -> Path:
  """Writes mu (NxL), logvar (NxL) and labels (N) of every example of the split to an .npz;
  for a posterior family other than the diagonal Gaussian, code (NxL: api.encode's) and
  labels."""
  out = _check_out(out, ".npz")
  run = open_run(workdir, which)
  x_u8, labels = _load_split(run, split)
  x_NxD = step.to_float(jnp.asarray(x_u8))
  mu, logvar = api.encode(run.state, x_NxD, _labels(run, labels))
  arrays: dict[str, Any] = {"mu": mu, "logvar": logvar} if logvar is not None else {"code": mu}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays, labels=labels)
  files.write_atomic(out, buffer.getvalue())
  return out


def evaluate(workdir, which: str = "latest", split: str = "test") -> dict[str, Any]:
  """The split's loss, BCE, KL and z = mu loss (nats per example) for one checkpoint, and
  the latent diagnostics: KL per dimension, active units, a posterior-collapse warning.

  Uses the key training used after that epoch, so on the test split the loss equals the
  one recorded in metrics.jsonl (when the data are the same).
  """
  run = open_run(workdir, which)
  state, keys, meta, settings = run.state, run.keys, run.meta, run.settings
  x_u8, labels = _load_split(run, split)
  epoch = meta["epoch"]
  eval_objective, hparams = objectives.evaluation(
    settings.objective,
    config_lib.shared_test_metric(settings),
    **run_context(settings, meta["data"]["train"]["examples"]),
  )
  evaluate_fn = jax.jit(step.evaluate, static_argnames=("apply_fn", "batch_size", "objective_fn"))
  conditional = step.model_of(state).conditional
  with jax.default_matmul_precision(settings.run.matmul_precision):  # As the run trained.
    sums = jax.device_get(
      evaluate_fn(
        state.params,
        state.apply_fn,
        (jnp.asarray(x_u8), jnp.asarray(labels, jnp.int32)) if conditional else jnp.asarray(x_u8),
        jax.random.fold_in(keys["eval"], epoch),
        batch_size=settings.optim.eval_batch_size,
        objective_fn=objectives.with_labels(eval_objective, conditional),
        hparams=hparams,
      )
    )
  result = {
    "checkpoint": str(Path(workdir) / checkpoint.SUBDIR / str(epoch)),
    "epoch": epoch,
    "split": split,
    "examples": len(x_u8),
  }
  result.update({k: float(v) / len(x_u8) for k, v in sums.items()})
  same_data = meta["data"].get(split) == checkpoint.data_fingerprint({split: (x_u8, labels)})[split]
  if split == "test" and same_data:
    result["recorded_test_loss"] = meta["records"][-1]["test_loss"]
  if settings.objective[0].name != "ae":  # The autoencoder has no posterior to diagnose.
    x_NxD = step.to_float(jnp.asarray(x_u8))
    diagnostics = latent_diagnostics(*posterior_codes(run, x_NxD, _labels(run, labels)))
    kl_per_dim = diagnostics["kl_per_dim"]
    result.update(
      active_units=diagnostics["active_units"],
      kl_per_dim=None if kl_per_dim is None else [round(float(v), 4) for v in kl_per_dim],
      collapse_warning=collapse_warning(diagnostics),
    )
  return result
