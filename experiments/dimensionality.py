"""Dimensionality reduction: how much of an MNIST digit survives d numbers, and how usable
are those numbers? VAE (z = mu) against the deterministic autoencoder and PCA.

Run (about 10 minutes on the project's 2-core CPU):
  .venv/bin/python -m experiments.dimensionality --workdir runs/dimensionality
  .venv/bin/python -m experiments.dimensionality --dims 2 20 --epochs 2      # a quick look

For d in --dims (2, 5, 10, 20, 50): the reference VAE and the same network as a
deterministic autoencoder (objective 'ae', BCE loss) with latent size d, trained --epochs (20) on
MNIST pixels / 255; PCA with d components fitted on the training set. On the test set:
reconstruction MSE per pixel and BCE per image (nats), both from the mean reconstruction
(VAE: z = mu); the same after storing each code at 8 bits per dimension (uniform levels over
the training codes' range); linear-probe accuracy (logistic regression on standardized
codes, fitted on the training codes). Bits per image: d x 32 as float32, d x 8 quantized,
against 784 x 8 = 6272 for the raw image. For the VAE, its active units (evaluate.latent_diagnostics):
how many of the d dimensions carry information.

Outputs in --workdir: dimensionality.md, dimensionality.json, dimensionality.png (error and probe
accuracy against d), the trained runs in vae_d<d>/ and ae_d<d>/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sklearn.decomposition import PCA

from experiments import common
from vae_jax import evaluate, metrics

CODE_BITS = 8  # Stored precision per code dimension for the quantized columns.


def linear_probe_accuracy(train_codes, train_labels, test_codes, test_labels) -> float:
  """Test accuracy of a logistic regression fitted on standardized training codes."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
  probe.fit(train_codes, train_labels)
  return float(probe.score(test_codes, test_labels))


def scores(name, d, encode_fn, decode_fn, x_train, y_train, x_test, y_test) -> dict:
  """Reconstruction errors (raw and 8-bit codes) and probe accuracy of one method."""
  codes_train, codes_test = encode_fn(x_train), encode_fn(x_test)
  recon = decode_fn(codes_test)
  low, high = codes_train.min(axis=0), codes_train.max(axis=0)
  recon_q = decode_fn(metrics.quantize(codes_test, low, high, CODE_BITS))
  result = {
    "method": name,
    "d": d,
    "mse": float(metrics.mse_per_pixel(x_test, recon).mean()),
    "bce": float(metrics.bce_per_image(x_test, recon).mean()),
    "mse_8bit": float(metrics.mse_per_pixel(x_test, recon_q).mean()),
    "bce_8bit": float(metrics.bce_per_image(x_test, recon_q).mean()),
    "probe_accuracy": linear_probe_accuracy(codes_train, y_train, codes_test, y_test),
    "bits_float32": 32 * d,
    "bits_8bit": CODE_BITS * d,
  }
  print(
    f"  {name} d={d}: MSE {result['mse']:.4f}, BCE {result['bce']:.1f}, "
    f"probe {result['probe_accuracy']:.3f}",
    flush=True,
  )
  return result


def plot(path: Path, rows: list[dict], dims: list[int]) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for method in ("VAE", "AE", "PCA"):
    r = [next(x for x in rows if x["method"] == method and x["d"] == d) for d in dims]
    for ax, key in zip(axes, ("mse", "bce", "probe_accuracy")):
      ax.plot(dims, [x[key] for x in r], "o-", label=method)
  for ax, label in zip(
    axes, ("test MSE per pixel", "test BCE per image (nats)", "linear-probe test accuracy")
  ):
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("code size d")
    ax.set_ylabel(label)
  axes[0].set_yscale("log")
  axes[0].legend()
  common.save_figure(fig, path, dpi=110)


def main() -> int:
  parser = common.parser(__doc__, "dimensionality", epochs=20)
  parser.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10, 20, 50])
  args = parser.parse_args()
  start = time.perf_counter()
  splits = common.prepare(args)
  (_, y_train), (_, y_test) = splits["train"], splits["test"]
  x_train, x_test = common.flat_pixels(splits)

  rows = []
  for d in args.dims:
    for name, model in (("VAE", "vae"), ("AE", "ae")):
      _, state, _ = common.train_model(
        args.workdir / f"{model}_d{d}",
        splits,
        {
          "model.latent_dim": d,
          "objective.name": "elbo" if model == "vae" else "ae",
          "optim.num_epochs": args.epochs,
          "seed": args.seed,
        },
      )
      rows.append(
        scores(
          name,
          d,
          lambda x, s=state: common.encode(s, x)[0],
          lambda z, s=state: common.decode(s, z),
          x_train,
          y_train,
          x_test,
          y_test,
        )
      )
      if model == "vae":  # How many of the d dimensions the VAE actually uses.
        diagnostics = evaluate.latent_diagnostics(*common.encode(state, x_test))
        rows[-1]["active_units"] = diagnostics["active_units"]
    pca = PCA(d).fit(x_train)
    rows.append(
      scores("PCA", d, pca.transform, pca.inverse_transform, x_train, y_train, x_test, y_test)
    )
  plot(args.workdir / "dimensionality.png", rows, args.dims)

  table = common.markdown_table(
    [
      "d",
      "method",
      "MSE / pixel",
      "BCE / image",
      "MSE, 8-bit codes",
      "BCE, 8-bit codes",
      "probe accuracy",
      "bits / image (float32 / 8-bit)",
      "VAE active units",
    ],
    [
      [
        r["d"],
        r["method"],
        f"{r['mse']:.4f}",
        f"{r['bce']:.1f}",
        f"{r['mse_8bit']:.4f}",
        f"{r['bce_8bit']:.1f}",
        f"{100 * r['probe_accuracy']:.1f}%",
        f"{r['bits_float32']} / {r['bits_8bit']}",
        r.get("active_units", ""),
      ]
      for r in rows
    ],
  )
  text = "\n".join(
    [
      f"Test set (10,000 images), {args.epochs} training epochs per network, seed {args.seed}; "
      "reconstructions from z = mu (VAE), z (AE) or the PCA projection. A raw image is "
      f"784 x 8 = 6272 bits. Wall time of the whole script: {time.perf_counter() - start:.0f} s.",
      "",
      table,
    ]
  )
  common.write_report(
    args.workdir,
    "dimensionality",
    "Dimensionality reduction: VAE, AE, PCA",
    text,
    {"epochs": args.epochs, "rows": rows},
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
