"""Generation: what do the reference VAE's samples, latent interpolations and (with two latent
dimensions) its whole latent space look like?

Run (about 3 minutes on the project's 2-core CPU):
  .venv/bin/python -m experiments.generation --workdir runs/generation
  .venv/bin/python -m experiments.generation --epochs 2      # a quick look

Trains the reference VAE (latent size 20) and the same recipe with latent size 2, --epochs
(30) each on MNIST pixels / 255. Then, with fixed keys:
- samples: 64 decodes of z ~ N(0, I) from each model (mean images);
- interpolations (latent 20): between the posterior means of 8 pairs of test images of
  different digits, 10 evenly spaced points on the line between them, decoded;
- manifold (latent 2): the decodes of a 20 x 20 grid of z = (Phi^-1(u), Phi^-1(v)), u, v in
  [0.05, 0.95] (equal prior mass per cell, as in Kingma & Welling's figure);
- scatter (latent 2): the posterior means of the 10,000 test images, coloured by label.
Numbers: each model's test ELBO, active units, and the accuracy of a 5-nearest-neighbour
classifier on the posterior means (train codes as references): how well digits separate.

Outputs in --workdir: generation.md, generation.json, generation.png (the four panels),
samples_d20.png, samples_d2.png, interpolation.png, manifold_d2.png (full resolution), the
trained runs in d20/ and d2/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from experiments import common
from vae_jax import evaluate, images


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, k: int = 5) -> float:
  from sklearn.neighbors import KNeighborsClassifier

  return float(
    KNeighborsClassifier(k).fit(train_codes, train_labels).score(test_codes, test_labels)
  )


def interpolation_pairs(labels: np.ndarray, num_pairs: int = 8) -> list[tuple[int, int]]:
  """(i, j): the first test image of digit p and the first of digit (p + 3) % 10, p = 0.."""
  first = {d: int(np.flatnonzero(labels == d)[0]) for d in range(10)}
  return [(first[p % 10], first[(p + 3) % 10]) for p in range(num_pairs)]


def plot(path: Path, panels: dict[str, np.ndarray], mu_2d: np.ndarray, labels: np.ndarray) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(12, 12))
  for ax, (title, grid) in zip(axes.flat, panels.items()):
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title)
    ax.axis("off")
  ax = axes.flat[3]
  scatter = ax.scatter(mu_2d[:, 0], mu_2d[:, 1], c=labels, cmap="tab10", s=2)
  ax.legend(*scatter.legend_elements(), loc="upper right", fontsize=7, markerscale=0.8)
  ax.set_title("latent 2: posterior means of the test set")
  ax.set_xlabel("mu_1")
  ax.set_ylabel("mu_2")
  common.save_figure(fig, path, dpi=90)


def main() -> int:
  parser = common.parser(__doc__, "generation", epochs=30)
  args = parser.parse_args()
  start = time.perf_counter()
  splits = common.prepare(args)
  (_, y_train), (_, y_test) = splits["train"], splits["test"]
  x_train, x_test = common.flat_pixels(splits)

  results, states, codes = {}, {}, {}
  for d in (20, 2):
    _, states[d], records = common.train_model(
      args.workdir / f"d{d}",
      splits,
      {"model.latent_dim": d, "optim.num_epochs": args.epochs, "seed": args.seed},
    )
    mu_train, _ = common.encode(states[d], x_train)
    mu_test, logvar_test = common.encode(states[d], x_test)
    codes[d] = mu_test
    diagnostics = evaluate.latent_diagnostics(mu_test, logvar_test)
    results[d] = {
      "test_loss": records[-1]["test_loss"],
      "active_units": diagnostics["active_units"],
      "knn_accuracy": knn_accuracy(mu_train, y_train, mu_test, y_test),
    }
    z_64xL = jax.random.normal(jax.random.key(0), (64, d))
    samples = common.decode(states[d], z_64xL)
    images.save_png(
      args.workdir / f"samples_d{d}.png", images.image_grid(samples.reshape(-1, 28, 28))
    )

  t_T = np.linspace(0.0, 1.0, 10)[:, None]
  rows = []
  for i, j in interpolation_pairs(y_test):
    path_TxL = (1 - t_T) * codes[20][i] + t_T * codes[20][j]
    rows += [x_test[i : i + 1], common.decode(states[20], path_TxL), x_test[j : j + 1]]
  interpolation = images.image_grid(np.concatenate(rows).reshape(-1, 28, 28), nrow=12)
  images.save_png(args.workdir / "interpolation.png", interpolation)

  quantiles = stats.norm.ppf(np.linspace(0.05, 0.95, 20))
  z2_grid = np.stack(np.meshgrid(quantiles, quantiles[::-1]), axis=-1).reshape(-1, 2)
  manifold = images.image_grid(common.decode(states[2], z2_grid).reshape(-1, 28, 28), nrow=20)
  images.save_png(args.workdir / "manifold_d2.png", manifold)
  plot(
    args.workdir / "generation.png",
    {
      "latent 20: samples z ~ N(0, I)": images.image_grid(
        common.decode(states[20], jax.random.normal(jax.random.key(0), (64, 20))).reshape(
          -1, 28, 28
        )
      ),
      "latent 20: interpolations (test image, 10 decodes, test image)": interpolation,
      "latent 2: decoded grid of prior quantiles": manifold,
    },
    codes[2],
    y_test,
  )

  table = common.markdown_table(
    ["latent size", "test loss (-ELBO, one sample)", "active units", "5-NN accuracy on mu"],
    [
      [d, f"{r['test_loss']:.2f}", f"{r['active_units']} / {d}", f"{100 * r['knn_accuracy']:.1f}%"]
      for d, r in results.items()
    ],
  )
  text = "\n".join(
    [
      f"Reference recipe, {args.epochs} epochs, seed {args.seed}; test set of 10,000 images. "
      f"Wall time: {time.perf_counter() - start:.0f} s.",
      "",
      table,
    ]
  )
  common.write_report(
    args.workdir,
    "generation",
    "Generation: samples, interpolations, 2-D latent space",
    text,
    {"epochs": args.epochs, "models": results},
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
