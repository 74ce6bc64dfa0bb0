"""Anomaly detection: a VAE trained on one digit, how well does its likelihood tell that digit
from the nine others?

Run (about 5 minutes on the project's 2-core CPU):
  .venv/bin/python -m experiments.anomaly --workdir runs/anomaly
  .venv/bin/python -m experiments.anomaly --classes 0 1 --epochs 3     # a quick look

For each held-in class c (--classes, default all ten): the reference VAE trained --epochs (30)
on the training images of class c only (about 6,000), dynamically binarized as the
likelihood protocol asks. Every test image (binarized once with key(evaluate.BINARIZE_SEED))
is scored by -ELBO and by the negative IWAE bound, both from --num-samples (100) importance
samples; higher = more anomalous. AUROC of each score for "not class c" (positives: the ~9,000
test images of other digits; negatives: the ~1,000 of class c). Baseline: the squared error of
a PCA projection (--pca-components 20, fitted on class c's training pixels).

Outputs in --workdir: anomaly.md, anomaly.json, anomaly.png (score histograms, held-in vs
held-out, per class), the trained runs in class_<c>/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from experiments import common
from vae_jax import evaluate, metrics


def plot(path: Path, scores_by_class: dict[int, np.ndarray], labels: np.ndarray) -> None:
  plt = common.pyplot()
  classes = sorted(scores_by_class)
  cols = min(5, len(classes))
  rows = -(-len(classes) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  for ax, c in zip(axes.flat, classes):
    score = scores_by_class[c]
    bins = np.linspace(np.percentile(score, 0.5), np.percentile(score, 99.5), 60)
    ax.hist(score[labels != c], bins, density=True, alpha=0.6, label="other digits")
    ax.hist(score[labels == c], bins, density=True, alpha=0.6, label=f"digit {c} (held in)")
    ax.set_title(f"trained on {c}")
    ax.set_xlabel("-log p(x), IWAE (nats)")
    ax.set_yticks([])
  for ax in list(axes.flat)[len(classes):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  common.save_figure(fig, path, dpi=100)


def main() -> int:
  parser = common.parser(__doc__, "anomaly", epochs=30)
  parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
  parser.add_argument("--num-samples", type=int, default=100)
  parser.add_argument("--pca-components", type=int, default=20)
  args = parser.parse_args()
  start = time.perf_counter()
  splits = common.prepare(args)
  (x_train_u8, y_train), (x_test_u8, y_test) = splits["train"], splits["test"]
  x_test = evaluate.binarize(x_test_u8.reshape(len(x_test_u8), -1),
                             jax.random.key(evaluate.BINARIZE_SEED))

  rows, iwae_scores = [], {}
  for c in args.classes:
    held_in = {"train": (x_train_u8[y_train == c], y_train[y_train == c]),
               "test": (x_test_u8[y_test == c], y_test[y_test == c])}
    _, state, _ = common.train_model(args.workdir / f"class_{c}", held_in, {
        "data.binarize": True, "optim.num_epochs": args.epochs, "seed": args.seed})
    est = evaluate.iwae_log_likelihood(state.params, state.apply_fn, common.as_images(state, x_test),
                                       jax.random.key(c),
                                       args.num_samples)
    x_in = held_in["train"][0].reshape(-1, 784) / 255.0
    pca = PCA(args.pca_components).fit(x_in)
    pca_error = metrics.mse_per_pixel(x_test, pca.inverse_transform(pca.transform(x_test)))
    anomalous = y_test != c
    iwae_scores[c] = -est["iwae"]
    rows.append({"class": c, "held_in_test": int((~anomalous).sum()),
                 "auroc_neg_elbo": roc_auc_score(anomalous, -est["elbo"]),
                 "auroc_neg_iwae": roc_auc_score(anomalous, -est["iwae"]),
                 "auroc_pca": roc_auc_score(anomalous, pca_error),
                 "nll_held_in": float(-est["iwae"][~anomalous].mean()),
                 "nll_held_out": float(-est["iwae"][anomalous].mean())})
    print(f"  class {c}: AUROC -ELBO {rows[-1]['auroc_neg_elbo']:.4f}, "
          f"-IWAE {rows[-1]['auroc_neg_iwae']:.4f}, PCA {rows[-1]['auroc_pca']:.4f}", flush=True)
  plot(args.workdir / "anomaly.png", iwae_scores, y_test)

  mean_row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "class"}
  table = common.markdown_table(
      ["held-in class", "held-in test images", "AUROC -ELBO", f"AUROC -IWAE (K={args.num_samples})",
       f"AUROC PCA error ({args.pca_components})", "NLL held in", "NLL held out"],
      [[r["class"], r["held_in_test"], f"{r['auroc_neg_elbo']:.4f}", f"{r['auroc_neg_iwae']:.4f}",
        f"{r['auroc_pca']:.4f}", f"{r['nll_held_in']:.1f}", f"{r['nll_held_out']:.1f}"]
       for r in rows] + [["mean", f"{mean_row['held_in_test']:.0f}", f"{mean_row['auroc_neg_elbo']:.4f}",
                          f"{mean_row['auroc_neg_iwae']:.4f}", f"{mean_row['auroc_pca']:.4f}",
                          f"{mean_row['nll_held_in']:.1f}", f"{mean_row['nll_held_out']:.1f}"]])
  text = "\n".join([
      f"One VAE per held-in digit, {args.epochs} epochs on its ~6,000 training images "
      f"(dynamically binarized), seed {args.seed}; all 10,000 binarized test images scored; "
      "positives = the other nine digits. NLL columns: mean -log p(x) estimate (nats) of the "
      f"held-in and held-out test images. Wall time: {time.perf_counter() - start:.0f} s.",
      "", table])
  common.write_report(args.workdir, "anomaly", "Anomaly detection: one digit held in", text,
                      {"epochs": args.epochs, "num_samples": args.num_samples, "rows": rows,
                       "mean": mean_row})
  return 0


if __name__ == "__main__":
  sys.exit(main())
