"""The signal-to-noise ratio of the encoder's and the decoder's gradients as K grows, for the
IWAE and for DReG (Rainforth et al., 2018, "Tighter variational bounds are not necessarily
better", their Figures 1 and 5; Tucker et al., 2018).

Run:
  .venv/bin/python -m experiments.snr --workdir runs/snr --keep-in experiments/results/snr

The question: does the IWAE's encoder gradient get noisier relative to its size as the number
of importance samples K grows (the paper: SNR falls as O(1/sqrt(K))), while the decoder's
gets cleaner (O(sqrt(K))), and does DReG's encoder gradient escape the fall (Tucker et al.)?
The model is Burda et al.'s one-layer network (vae_jax/configs/iwae_1layer.py) on dynamically
binarized MNIST, at its initialization and after --epochs of the ELBO. For one fixed batch of
--batch test images (binarized once with key(0)), R = --repeats gradient estimates of the
batch's loss with independent keys give, per parameter, SNR = |mean| / sd; the figure and the
table report the mean over each network's parameters (encoder: encoder weights; decoder:
decoder weights), with a least-squares slope of log SNR against log K. Writes snr.md,
snr.json and snr.png in the workdir (and in --keep-in).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import vae_jax
from experiments import common
from vae_jax import config as config_lib, evaluate, objectives
from vae_jax.configs import iwae_1layer

SAMPLES = (1, 3, 10, 30, 100, 300, 1000)
ESTIMATORS = ("iwae", "iwae_dreg")
PAPER = (
  "Rainforth et al. (2018): the IWAE encoder gradient's SNR falls as O(1/sqrt(K)) and the "
  "decoder's rises as O(sqrt(K)) (their Figure 1; slopes -1/2 and +1/2 in log-log); Tucker "
  "et al. (2018): DReG's encoder SNR rises with K instead."
)


def gradient_snr(params, apply_fn, x, name: str, k: int, repeats: int, key) -> dict:
  """Mean SNR over the encoder's and the decoder's parameters for K = k."""
  entry = objectives.REGISTRY.get(name)
  hparams = objectives.make_hparams((entry, {**entry.settings, "num_samples": k}))
  fn = entry.target.fn

  def grads(key):
    g = jax.grad(lambda p: fn(p, apply_fn, x, key, hparams)[0])(params)
    return {
      part: jnp.concatenate([a.ravel() for a in jax.tree.leaves(g[part])])
      for part in ("encoder", "decoder")
    }

  g = jax.device_get(jax.jit(lambda keys: jax.lax.map(grads, keys))(jax.random.split(key, repeats)))
  out = {}
  for part, values in g.items():
    values = np.asarray(values, np.float64)
    sd = values.std(0, ddof=1)
    live = sd > 0
    out[part] = float(np.mean(np.abs(values.mean(0))[live] / sd[live]))
  return out


def slope(ks, snrs) -> float:
  return float(np.polyfit(np.log(ks), np.log(snrs), 1)[0])


def plot(results: dict, path: Path) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
  for ax, (stage, by_estimator) in zip(axes[0], results.items()):
    for name, rows in by_estimator.items():
      ks = [r["k"] for r in rows]
      for part, style in (("encoder", "-o"), ("decoder", "--s")):
        ax.loglog(ks, [r[part] for r in rows], style, label=f"{name} {part}")
    ax.set(title=stage, xlabel="K (importance samples)", ylabel="mean SNR")
    ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main() -> int:
  parser = common.parser(__doc__, "snr", epochs=5)
  parser.add_argument("--batch", type=int, default=20, help="the fixed batch's test images")
  parser.add_argument("--repeats", type=int, default=100, help="gradient estimates per K")
  parser.add_argument("--samples", default=",".join(map(str, SAMPLES)), help="the K values")
  parser.add_argument("--keep-in", type=Path, default=None, help="copy the report here")
  args = parser.parse_args()
  splits = common.prepare(args)
  ks = [int(k) for k in args.samples.split(",")]
  x_u8 = splits["test"][0][: args.batch]
  x = jnp.asarray(evaluate.binarize(x_u8, jax.random.key(evaluate.BINARIZE_SEED)))
  recipe = config_lib.flatten(iwae_1layer.get_config("vae,1").to_dict())
  config = common.config_with(
    {
      **{k: v for k, v in recipe.items() if not k.startswith(("objective.", "run.", "data."))},
      "data.binarize": True,
      "objective.name": "elbo",
      "optim.lr_schedule": "constant",
      "optim.num_epochs": args.epochs,
    }
  )
  stages = {"initialization": None, f"after {args.epochs} epochs of the ELBO": args.workdir / "run"}
  results: dict = {}
  start = time.perf_counter()
  for stage, run_dir in stages.items():
    if run_dir is None:
      state, _ = vae_jax.create_state(
        config, x.shape[1:], num_train_examples=len(splits["train"][0])
      )
    else:
      state, _ = vae_jax.train(config, run_dir, splits)
    results[stage] = {
      name: [
        {
          "k": k,
          **gradient_snr(state.params, state.apply_fn, x, name, k, args.repeats, jax.random.key(k)),
        }
        for k in ks
      ]
      for name in ESTIMATORS
    }
  seconds = time.perf_counter() - start
  header = ["stage", "K", *(f"{n} {p}" for n in ESTIMATORS for p in ("encoder", "decoder"))]
  rows, slopes = [], []
  for stage, by_estimator in results.items():
    for i, k in enumerate(ks):
      rows.append(
        [
          stage,
          k,
          *(f"{by_estimator[n][i][p]:.3f}" for n in ESTIMATORS for p in ("encoder", "decoder")),
        ]
      )
    for n in ESTIMATORS:
      for p in ("encoder", "decoder"):
        slopes.append(
          f"- {stage}, {n} {p}: slope {slope(ks, [r[p] for r in by_estimator[n]]):+.2f}"
        )
  text = (
    f"Mean SNR (|mean| / sd over {args.repeats} gradient estimates, averaged over each "
    f"network's parameters) of one batch of {args.batch} binarized test images; Burda et al.'s "
    f"one-layer network. {seconds / 60:.1f} min in all.\n\n"
    + common.markdown_table(header, rows)
    + "\n\nLeast-squares slopes of log SNR against log K:\n\n"
    + "\n".join(slopes)
    + f"\n\nThe papers: {PAPER}\n"
  )
  plot(results, args.workdir / "snr.png")
  common.write_report(
    args.workdir,
    "snr",
    "Gradient SNR against K: IWAE and DReG",
    text,
    {"results": results, "samples": ks},
  )
  if args.keep_in:
    args.keep_in.mkdir(parents=True, exist_ok=True)
    for name in ("snr.md", "snr.json", "snr.png"):
      shutil.copy(args.workdir / name, args.keep_in / name)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
