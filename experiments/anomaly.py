"""One-class anomaly detection: which score of a VAE, and which classical baseline, best tells
the normal class from the nine others?

Run (the docs/anomaly.md tables; about 20 CPU minutes per dataset on the project's 2-core CPU):
  .venv/bin/python -m experiments.anomaly --workdir runs/anomaly
  .venv/bin/python -m experiments.anomaly --workdir runs/anomaly_fashion_mnist --dataset fashion_mnist
  .venv/bin/python -m experiments.anomaly --classes 0 1 --seeds 1 --epochs 3     # a quick look

Protocol: for each normal class c (--classes), the reference VAE with a likelihood for gray
levels (--likelihood: Gaussian, a learned sigma per pixel, by default) trained --epochs on the ~6,000
gray-level training images of class c, --seeds models at once (vae_jax.train_models); every
one of the 10,000 test images scored by each of vae_jax.anomaly.SCORES; AUROC for "not class
c". The likelihood-ratio score also trains a background model per seed: the same VAE on the
training images of c perturbed by vae_jax.anomaly.perturb (--background-rate). The classical
baselines (experiments/anomaly_baselines.py) see the same split. --binarize: the older
protocol (dynamically binarized training, Bernoulli decoder, test binarized once).

Outputs in --workdir: anomaly.md (per-class table, mean +- std over seeds, seconds per row),
anomaly.json, anomaly.png (AUROC heat map); per class class_<c>/vae.json and baselines.json
(AUROCs and seconds: a rerun resumes there) and the trained runs; with --baselines-only,
baselines.md / .json / .png instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

from experiments import anomaly_baselines, common
from vae_jax import anomaly, evaluate, objectives, training
from vae_jax.group import unstack

CLASS_NAMES = {
  "fashion_mnist": [
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
  ]
}
BACKGROUND_SEED = 7  # The perturbation of the background models' training images.


def write_json(path: Path, value) -> None:
  """Written whole (a rename): a killed run leaves either the old file or the new one."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(value, indent=1) + "\n")
  tmp.replace(path)


def train_group(args, directory: Path, splits, overrides: dict) -> tuple[list, float]:
  """--seeds models of one config on splits (resumed or loaded if done): (states, seconds per
  model, from the records: compile and train time of every epoch, divided by the models)."""
  config = common.config_with({"optim.num_epochs": args.epochs, **overrides})
  seeds = [{"seed": args.seed + k} for k in range(args.seeds)]
  run_dirs = [directory / f"seed_{s['seed']}" for s in seeds]
  for run_dir in run_dirs:
    run_dir.mkdir(parents=True, exist_ok=True)
  states, records = training.train_models(
    config, splits, seeds, directory / "ckpt", run_dirs, log=lambda line: None
  )
  seconds = sum(r["train_seconds"] + r["compile_seconds"] for r in records[0]) / len(seeds)
  print(
    f"  {directory.name}: {len(seeds)} models, {args.epochs} epochs, test loss "
    f"{records[0][-1]['test_loss']:.1f} ({seconds:.0f} s per model)",
    flush=True,
  )
  return [unstack(states, k) for k in range(len(seeds))], seconds


def vae_result(args, c: int, held_in, x_test, anomalous, likelihood) -> dict:
  """AUROC and seconds per score and seed of class c's models (trained here if needed)."""
  overrides = {
    "data.binarize": args.binarize,
    "objective.likelihood": likelihood.likelihood,
    "objective.gaussian_sigma": likelihood.gaussian_sigma,
  }
  states, train_s = train_group(args, args.workdir / f"class_{c}", held_in, overrides)
  backgrounds, background_s = None, 0.0
  if "likelihood_ratio" in args.scores:
    background_train = anomaly.perturb(
      held_in["train"][0],
      jax.random.fold_in(jax.random.key(BACKGROUND_SEED), c),
      args.background_rate,
    )
    backgrounds, background_s = train_group(
      args,
      args.workdir / f"class_{c}_background",
      {**held_in, "train": (background_train, held_in["train"][1])},
      overrides,
    )
  x_train = held_in["train"][0].astype(np.float32) / 255
  out: dict[str, Any] = {
    "auroc": {},
    "seconds": {},
    "train_seconds": train_s,
    "background_seconds": background_s,
  }
  if likelihood.learned_sigma:  # How far the per-pixel sigma (initially 1) has moved.
    out["sigma_mean"] = [float(np.exp(s.params["log_sigma"]).mean()) for s in states]
  for k, (state, background) in enumerate(zip(states, backgrounds or [None] * len(states))):
    scoring = anomaly.Scoring(
      state,
      x_test,
      x_train,
      likelihood,
      jax.random.fold_in(jax.random.key(args.seed + k), c),
      args.num_samples,
      background,
    )
    for name in args.scores:
      score, seconds = anomaly.timed_score(scoring, name)
      seconds += train_s + (background_s if name == "likelihood_ratio" else 0.0)
      out["auroc"].setdefault(name, []).append(float(roc_auc_score(anomalous, score)))
      out["seconds"].setdefault(name, []).append(seconds)
  return out


def baseline_result(held_in, x_test, anomalous) -> dict:
  """AUROC and seconds (fit + score) of every classical baseline on class c's split."""
  x_train = held_in["train"][0].reshape(len(held_in["train"][0]), -1) / 255.0
  x_test = x_test.reshape(len(x_test), -1).astype(np.float64)
  out: dict[str, dict[str, list[float]]] = {"auroc": {}, "seconds": {}}
  for name, fn in anomaly_baselines.BASELINES.items():
    start = time.perf_counter()
    score = fn(x_train, x_test)
    out["seconds"][name] = [time.perf_counter() - start]
    out["auroc"][name] = [float(roc_auc_score(anomalous, score))]
  return out


def cached(path: Path, compute) -> dict:
  if path.exists():
    return json.loads(path.read_text())
  path.parent.mkdir(parents=True, exist_ok=True)
  value = compute()
  write_json(path, value)
  return value


def summarize(per_class: dict[int, dict]) -> dict[str, dict]:
  """Per method: AUROC mean and sd over seeds per class, the mean over classes (its sd over
  seeds of the per-seed class means), and mean seconds per model.
  A method measured on some classes only (--scores) has NaN for the others and its means
  over the classes it has (``classes``: how many)."""
  methods = list(dict.fromkeys(m for r in per_class.values() for m in r["auroc"]))
  out = {}
  for name in methods:
    have = [c for c in sorted(per_class) if name in per_class[c]["auroc"]]
    auroc_CxS = np.array([per_class[c]["auroc"][name] for c in have])
    per_seed = auroc_CxS.mean(0)
    class_mean = dict(zip(have, auroc_CxS.mean(1)))
    class_sd = dict(
      zip(have, auroc_CxS.std(1, ddof=1) if auroc_CxS.shape[1] > 1 else np.zeros(len(have)))
    )
    out[name] = {
      "class_mean": [float(class_mean.get(c, np.nan)) for c in sorted(per_class)],
      "class_sd": [float(class_sd.get(c, np.nan)) for c in sorted(per_class)],
      "classes": len(have),
      "mean": float(per_seed.mean()),
      "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
      "seconds": float(np.mean([np.mean(per_class[c]["seconds"][name]) for c in have])),
    }
  return out


def sigma_note(per_class: dict[int, dict]) -> str:
  """The learned Gaussian sigma (mean over pixels and models), if the likelihood has one."""
  sigmas = [v for r in per_class.values() for v in r.get("sigma_mean", [])]
  return (
    f" The learned per-pixel sigma (initially 1) ends at {np.mean(sigmas):.3f} on average "
    f"({min(sigmas):.3f} to {max(sigmas):.3f} over models)."
    if sigmas
    else ""
  )


LABELS = {
  "neg_elbo": "VAE -ELBO",
  "neg_log_px": "VAE -log p(x) (IWAE)",
  "bce_at_mean": "VAE BCE at z=mu",
  "mse_at_mean": "VAE MSE at z=mu",
  "mahalanobis": "VAE Mahalanobis of mu",
  "complexity_corrected": "VAE -log p(x) - L(x) (zlib)",
  "likelihood_ratio": "VAE likelihood ratio (background)",
  "pca_error": "PCA error (20)",
  "ocsvm_raw": "OC-SVM, pixels",
  "ocsvm_pca": "OC-SVM, PCA 50",
  "kde_pca": "KDE, PCA 50",
  "iforest": "Isolation Forest",
}


def table(summary: dict[str, dict], classes: list[int], names: list[str]) -> str:
  complete = [m for m in summary if summary[m]["classes"] == len(classes)]
  best = max(complete, key=lambda m: summary[m]["mean"], default=None)
  rows = []
  for name, s in summary.items():
    cells = [
      "—" if np.isnan(m) else f"{m:.3f} ± {sd:.3f}" if sd else f"{m:.3f}"
      for m, sd in zip(s["class_mean"], s["class_sd"])
    ]
    mean = f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] else f"{s['mean']:.3f}"
    if s["classes"] < len(classes):
      mean += f" ({s['classes']} classes)"
    label = LABELS.get(name, name)
    rows.append([f"**{label}**" if name == best else label, *cells, mean, f"{s['seconds']:.0f}"])
  return common.markdown_table(
    ["score", *[f"{c} {names[c]}".strip() for c in classes], "mean", "s / class"], rows
  )


def plot(path: Path, summary: dict[str, dict], classes: list[int], names: list[str], title: str):
  plt = common.pyplot()
  methods = list(summary)
  grid = np.array([[*summary[m]["class_mean"], summary[m]["mean"]] for m in methods])
  fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 4, 0.42 * len(methods) + 1.4))
  ax.imshow(grid, cmap="RdYlGn", vmin=0.3, vmax=1.0, aspect="auto")
  for (i, j), value in np.ndenumerate(grid):
    ax.text(j, i, "—" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(
    range(len(classes) + 1),
    [f"{c} {names[c]}".strip() for c in classes] + ["mean"],
    rotation=30,
    ha="right",
    fontsize=8,
  )
  ax.set_yticks(range(len(methods)), [LABELS.get(m, m) for m in methods], fontsize=8)
  ax.axvline(len(classes) - 0.5, color="black", lw=1)
  ax.set_title(title, fontsize=9)
  common.save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
  parser = common.parser(__doc__, "anomaly", epochs=10)
  parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
  parser.add_argument(
    "--seeds", type=int, default=3, help="models per class (seeds seed, seed+1, ...)"
  )
  parser.add_argument("--num-samples", type=int, default=20, help="K of the IWAE estimates")
  parser.add_argument(
    "--likelihood",
    default="gaussian",
    help="config.objective.likelihood for gray levels (ignored with --binarize)",
  )
  parser.add_argument(
    "--gaussian-sigma",
    type=float,
    default=0.0,
    help="config.objective.gaussian_sigma (0: a learned sigma per pixel)",
  )
  parser.add_argument(
    "--background-rate",
    type=float,
    default=0.2,
    help="fraction of pixels replaced by uniform noise for the background model",
  )
  parser.add_argument("--binarize", action="store_true", help="the binarized protocol")
  parser.add_argument(
    "--scores",
    nargs="+",
    default=list(anomaly.SCORES),
    choices=list(anomaly.SCORES),
    help="the scores computed (likelihood_ratio: also trains background models)",
  )
  parser.add_argument("--no-baselines", action="store_true")
  parser.add_argument(
    "--baselines-only",
    action="store_true",
    help="only the classical baselines' class_<c>/baselines.json (a second process)",
  )
  args = parser.parse_args(argv)
  splits = common.prepare(args)
  (x_train_u8, y_train), (x_test_u8, y_test) = splits["train"], splits["test"]
  likelihood = objectives.Likelihood(
    "bernoulli" if args.binarize else args.likelihood, args.gaussian_sigma
  )
  likelihood.check()
  x_test = (
    evaluate.binarize(
      x_test_u8.reshape(len(x_test_u8), -1), jax.random.key(evaluate.BINARIZE_SEED)
    ).reshape(x_test_u8.shape)
    if args.binarize
    else x_test_u8.astype(np.float32) / 255
  )
  per_class = {}
  for c in args.classes:
    held_in = {
      "train": (x_train_u8[y_train == c], y_train[y_train == c]),
      "test": (x_test_u8[y_test == c], y_test[y_test == c]),
    }
    anomalous = y_test != c
    if args.baselines_only:
      per_class[c] = cached(
        args.workdir / f"class_{c}" / "baselines.json",
        lambda: baseline_result(held_in, x_test, anomalous),
      )
      continue
    result = vae = cached(
      args.workdir / f"class_{c}" / "vae.json",
      lambda: vae_result(args, c, held_in, x_test, anomalous, likelihood),
    )
    if not args.no_baselines:
      base = cached(
        args.workdir / f"class_{c}" / "baselines.json",
        lambda: baseline_result(held_in, x_test, anomalous),
      )
      result = {
        "auroc": {**result["auroc"], **base["auroc"]},
        "seconds": {**result["seconds"], **base["seconds"]},
      }
    per_class[c] = {**result, "sigma_mean": vae.get("sigma_mean", [])}
    print(
      f"  class {c}: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in result["auroc"].items()),
      flush=True,
    )
  summary = summarize(per_class)
  name = "baselines" if args.baselines_only else "anomaly"
  names = CLASS_NAMES.get(args.dataset, [""] * 10)
  inputs = "binarized" if args.binarize else f"gray-level, {likelihood.likelihood} likelihood"
  title = f"{args.dataset}: AUROC, one class normal ({inputs}), mean over {args.seeds} seeds"
  plot(args.workdir / f"{name}.png", summary, args.classes, names, title)
  text = "\n".join(
    [
      f"Dataset {args.dataset}, {inputs}; per normal class {args.seeds} VAEs (seeds "
      f"{args.seed}..{args.seed + args.seeds - 1}) trained {args.epochs} epochs on its training "
      f"images; IWAE K = {args.num_samples}; background models: pixels replaced with rate "
      f"{args.background_rate}. AUROC on all {len(x_test)} test images (mean ± sd over seeds; "
      "baselines are deterministic: one value). s / class: seconds per model and class "
      "(VAE rows: its training, and the background's for the ratio, plus the score's own "
      "work; baselines: fit + score; wall clock on a shared, loaded machine)."
      + sigma_note(per_class),
      "",
      table(summary, args.classes, names),
    ]
  )
  common.write_report(
    args.workdir,
    name,
    f"One-class anomaly detection: {args.dataset}",
    text,
    {
      "args": {k: str(v) for k, v in vars(args).items()},
      "summary": summary,
      "per_class": {str(c): r for c, r in per_class.items()},
    },
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
