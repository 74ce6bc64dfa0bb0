"""A trained run's posterior as a dataset (data source 'encoded'): M1's features for M2.

``config.data.source='encoded'``, ``config.data.dir=RUN``: each split of the run's own data
becomes the posterior q(z|x) of its latest checkpoint (images as pixels / 255, no
binarization), keeping the units active on the training split (Var_x mu_l > 0.01, Burda et
al.'s criterion, which is Kingma et al.'s std > 0.1 of M1+M2; a constant unit would give a
learned-sigma likelihood an unbounded density). The data are float32 N x 1 x A x 2, the
channels the mean and the log-variance; a model sees 1 x A x 1: every training step draws
z ~ q(z|x) afresh, as Kingma et al.'s code does for M1+M2, and evaluation takes the mean
(vae_jax.step.to_float). A model on them uses a likelihood for real values
(``likelihood='normal'``). The data fingerprint records their SHA-256, so a run on them
resumes only on the same features.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from vae_jax.data import DataError


@functools.cache
def _encode_run(workdir: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
  from vae_jax import data, evaluate, runs

  try:
    run = runs.open_run(workdir, "latest")
  except Exception as e:  # Not a run, no checkpoint, an unknown plugin: one line naming it.
    raise DataError(
      f"config.data.dir={workdir!r}: data source 'encoded' needs a trained run there ({e})"
    ) from None
  if run.settings.data.source == "encoded":
    raise DataError(
      f"config.data.dir={workdir!r}: that run was itself trained on encoded data; "
      "name the run whose images to encode"
    )
  if run.settings.posterior and not run.settings.posterior[0].target.gaussian:
    raise DataError(
      f"config.data.dir={workdir!r}: data source 'encoded' stores a diagonal Gaussian "
      "posterior (mean, log-variance); that run's posterior is another"
    )
  splits = data.load_data(run.settings.data)
  with jax.default_matmul_precision(run.settings.run.matmul_precision):
    posteriors = {
      split: evaluate.encode_all(run.state.params, run.state.apply_fn, x_u8 / np.float32(255))
      for split, (x_u8, _) in splits.items()
    }
  mean_train = posteriors["train"][0].astype(np.float64)
  active_L = np.var(mean_train, axis=0) > evaluate.ACTIVE_UNIT_THRESHOLD
  if not active_L.any():
    raise DataError(f"config.data.dir={workdir!r}: the run's posterior has no active unit")
  out = {}
  for split, (_, labels) in splits.items():
    mu_NxA, logvar_NxA = (a[:, active_L] for a in posteriors[split])
    features = np.ascontiguousarray(np.stack([mu_NxA, logvar_NxA], -1)[:, None], np.float32)
    features.flags.writeable = False
    out[split] = (features, labels)
  return out, active_L


def active_units(workdir: str) -> np.ndarray:
  """Which of the run's latent units its encoded data keep (L bool): to decode a code of the
  encoded space, put its values there and the prior mean (0) elsewhere."""
  return _encode_run(str(workdir))[1]


def load_encoded(workdir: str, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(posterior_Nx1xAx2 float32: mean and log-variance, labels_N) of a split of the run in
  workdir (see above)."""
  if not workdir:
    raise DataError(
      "config.data.source='encoded': set config.data.dir to the trained run whose "
      "posterior is the data"
    )
  features, labels = _encode_run(str(workdir))[0][split]
  return (features[:limit], labels[:limit]) if limit else (features, labels)
