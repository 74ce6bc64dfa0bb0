"""Lossless compression: a trained VAE with bits-back ANS against gzip, bz2, lzma, PNG and WebP.

Run (resumable: trained models and finished rows are kept in --workdir, and the report holds
every finished row of the workdir, whichever invocation measured it):
  .venv/bin/python -m experiments.compression --workdir runs/compression
  .venv/bin/python -m experiments.compression --datasets fashion_mnist --epochs 30 \
      --workdir runs/compression                             # a row of its own schedule
  .venv/bin/python -m experiments.compression --epochs 2 --num 300 --workdir runs/compression_quick

For each dataset (MNIST, Fashion-MNIST) and protocol (Townsend, Bird and Barber 2019, Table 2):
- binarized: the test split binarized once (the standard protocol's fixed key,
  vae_jax.evaluate.binarize), coded by a VAE with a Bernoulli decoder trained on dynamically
  binarized images (the reference MLP, 400 hidden units, 20 latents);
- full: the 8-bit test split, coded by a VAE with the beta-binomial likelihood (the paper's:
  784-200-50 and back, its decoder giving log alpha and log beta per pixel).
Each model trains --epochs epochs. Figures, on the whole test split (--num: its first N):
- BB-ANS: the size of the file `python -m vae_jax compress` writes (header, the 1,024
  initial bits and the CRC included), and the images decoded back, checked bit for bit;
- the model's negative ELBO, the rate BB-ANS should approach (--elbo-samples draws of z
  per image, vae_jax.log_likelihood);
- gzip, bz2, lzma (level 9) of the raw bytes (bits packed eight to a byte for the binarized
  images), PNG (optimize) and lossless WebP of each image, as the paper's
  benchmark_compressors.py codes them;
- encode and decode throughput (images per second, compilation excluded: a second pass);
- the rate of the first n images for growing n (the initial bits amortizing).
Outputs in --workdir: compression.md / .json, compression.png, and the runs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

import vae_jax
from experiments import common
from vae_jax import compression, files, objectives

# Townsend et al. (2019), Table 2 (bits per dimension), and later bits-back results.
PAPER = {
  "binarized": {"BB-ANS": 0.19, "bz2": 0.25, "gzip": 0.33, "PNG": 0.78, "WebP": 0.44},
  "full": {"BB-ANS": 1.41, "bz2": 1.42, "gzip": 1.64, "PNG": 2.79, "WebP": 2.10},
}
PROTOCOLS = ("binarized", "full")


def model_config(protocol: str, dataset: str, epochs: int):
  overrides = {
    "data.name": dataset,
    "optim.num_epochs": epochs,
    "run.checkpoint_every_seconds": 600.0,
  }
  if protocol == "binarized":
    overrides |= {"data.binarize": True}
  else:
    overrides |= {
      "model.hidden_dim": 200,
      "model.latent_dim": 50,
      "objective.likelihood": "beta_binomial",
    }
  return common.config_with(overrides)


def classical(x_u8: np.ndarray, binary: bool) -> dict[str, float]:
  """Bits per dimension of the classical codecs on the images (N x H x W x C uint8)."""
  pixels = x_u8.size
  raw = np.packbits(x_u8 > 0).tobytes() if binary else x_u8.tobytes()
  out = {
    "gzip": len(gzip.compress(raw, 9)),
    "bz2": len(bz2.compress(raw, 9)),
    "lzma": len(lzma.compress(raw, preset=9)),
  }
  for name, kwargs in (("PNG", {"optimize": True}), ("WebP", {"lossless": True, "quality": 100})):
    total = 0
    for image in x_u8:
      buffer = io.BytesIO()
      pixels_hwc = image[..., 0] if image.shape[-1] == 1 else image
      # Binary images as 1-bit images (mode 1), as the paper's benchmark_compressors.py has them.
      Image.fromarray(pixels_hwc > 0 if binary else pixels_hwc).save(buffer, format=name, **kwargs)
      total += len(buffer.getvalue())
    out[name] = total
  return {k: 8 * v / pixels for k, v in out.items()}


def measure(args, dataset: str, protocol: str) -> dict:
  """The row of one dataset and protocol (read back when an earlier invocation measured it)."""
  workdir = args.workdir / f"{dataset}_{protocol}"
  row_path = workdir / "compression_row.json"
  if row_path.exists():
    return json.loads(row_path.read_text())
  config = model_config(protocol, dataset, args.epochs)
  start = time.perf_counter()
  state, records = vae_jax.train(config, workdir)
  train_seconds = sum(r["train_seconds"] for r in records)
  run = vae_jax.open_run(workdir)
  x_u8, _ = compression.read_images("test", run)
  x_u8 = x_u8[: args.num or None]
  likelihood = run.settings.objective[1]["likelihood"]
  x = x_u8.astype(np.float32) / 255
  elbo = vae_jax.log_likelihood(
    state, x, jax.random.key(1), args.elbo_samples, objectives.Likelihood(likelihood)
  )["elbo"]
  neg_elbo_bits = float(-elbo.sum() / np.log(2))
  blob = compression.compress_images(state, x_u8, likelihood)  # Compiles every batch shape.
  t0 = time.perf_counter()
  blob = compression.compress_images(state, x_u8, likelihood)
  encode_seconds = time.perf_counter() - t0
  back, _ = compression.decompress_bytes(state, blob)  # Compiles.
  t0 = time.perf_counter()
  back, _ = compression.decompress_bytes(state, blob)
  decode_seconds = time.perf_counter() - t0
  assert np.array_equal(back, x_u8), "round trip failed"
  curve = {}
  for n in [n for n in (1, 10, 100, 1000, 10000) if n <= len(x_u8)]:
    curve[n] = 8 * len(compression.compress_images(state, x_u8[:n], likelihood)) / x_u8[:n].size
  out = {
    "dataset": dataset,
    "protocol": protocol,
    "images": len(x_u8),
    "epochs": len(records),
    "train_seconds": train_seconds,
    "bbans_bits_per_dim": 8 * len(blob) / x_u8.size,
    "neg_elbo_bits_per_dim": neg_elbo_bits / x_u8.size,
    "bytes": len(blob),
    "encode_images_per_second": len(x_u8) / encode_seconds,
    "decode_images_per_second": len(x_u8) / decode_seconds,
    "round_trip": True,
    "rate_by_images": curve,
    "classical": classical(x_u8, protocol == "binarized"),
    "seconds": time.perf_counter() - start,
  }
  out["bbans_over_elbo"] = out["bbans_bits_per_dim"] / out["neg_elbo_bits_per_dim"] - 1
  files.write_atomic(row_path, (json.dumps(out) + "\n").encode())
  print(
    f"  {dataset} {protocol}: BB-ANS {out['bbans_bits_per_dim']:.4f} bits/dim, -ELBO "
    f"{out['neg_elbo_bits_per_dim']:.4f} ({out['bbans_over_elbo']:+.2%}), encode "
    f"{out['encode_images_per_second']:.0f} / decode {out['decode_images_per_second']:.0f} images/s",
    flush=True,
  )
  return out


def main() -> int:
  parser = common.parser(__doc__, "compression", epochs=100)
  parser.add_argument("--datasets", default="mnist,fashion_mnist")
  parser.add_argument("--num", type=int, default=0, help="test images (0: all)")
  parser.add_argument("--elbo-samples", type=int, default=100)
  args = parser.parse_args()
  args.workdir = args.workdir or Path("runs/compression")
  args.workdir.mkdir(parents=True, exist_ok=True)
  for dataset in args.datasets.split(","):
    for protocol in PROTOCOLS:
      measure(args, dataset, protocol)
  results = [json.loads(path.read_text()) for path in args.workdir.glob("*/compression_row.json")]
  results.sort(
    key=lambda r: (r["dataset"] != "mnist", r["dataset"], PROTOCOLS.index(r["protocol"]))
  )
  rows = []
  for r in results:
    paper = PAPER[r["protocol"]] if r["dataset"] == "mnist" else {}
    codecs = {
      "BB-ANS (ours)": r["bbans_bits_per_dim"],
      "-ELBO (ours)": r["neg_elbo_bits_per_dim"],
      **r["classical"],
    }
    for name, value in codecs.items():
      key = "BB-ANS" if name.startswith("BB-ANS") else name
      rows.append(
        [
          r["dataset"],
          r["protocol"],
          name,
          f"{value:.4f}",
          f"{paper[key]:.2f}" if key in paper else "",
        ]
      )
  text = common.markdown_table(
    ["dataset", "protocol", "coder", "bits per dimension", "Townsend et al."], rows
  )
  text += "\n\n" + common.markdown_table(
    [
      "dataset",
      "protocol",
      "images",
      "BB-ANS / -ELBO - 1",
      "encode images/s",
      "decode images/s",
      "epochs",
      "train s",
    ],
    [
      [
        r["dataset"],
        r["protocol"],
        r["images"],
        f"{r['bbans_over_elbo']:+.3%}",
        f"{r['encode_images_per_second']:.0f}",
        f"{r['decode_images_per_second']:.0f}",
        r["epochs"],
        f"{r['train_seconds']:.0f}",
      ]
      for r in results
    ],
  )
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in results:
    ns = sorted(r["rate_by_images"], key=int)
    ax.plot(
      [int(n) for n in ns],
      [r["rate_by_images"][n] for n in ns],
      marker="o",
      label=f"{r['dataset']} {r['protocol']}",
    )
    ax.axhline(r["neg_elbo_bits_per_dim"], ls=":", color=ax.lines[-1].get_color(), lw=1)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("test images coded in one file")
  ax.set_ylabel("bits per dimension (file size)")
  ax.set_title("BB-ANS: the initial bits amortize (dotted: -ELBO)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, which="both")
  common.save_figure(fig, args.workdir / "compression.png")
  common.write_report(
    args.workdir,
    "compression",
    "Lossless compression with bits-back coding",
    text,
    {"results": results},
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
