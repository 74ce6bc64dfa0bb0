"""Fashion-MNIST under the binarized protocol: the reference MLP and the conv model, seeds x epochs.

Run (the defaults are the README's table: 3 seeds x 20 epochs, K = 5000):
  .venv/bin/python -m experiments.fashion --workdir runs/fashion

Each model and seed trains on dynamically binarized Fashion-MNIST (a fresh Bernoulli draw
per presentation) in its own resumable run (``<model>_seed<k>/``); the test set is binarized
once with key(0) and evaluated with the K-sample importance-weighted bound (``--num-samples``;
``--nll-examples`` test images per model, 0 = all; the conv decoder is about 40x the MLP's
cost, so ``--conv-nll-examples`` may take fewer). Each estimate is stored next to its run
(``nll_K_N.json``) and reused. Writes fashion.md / fashion.json, and sample and
reconstruction grids of seed 1 of each model.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from experiments import common
from vae_jax import evaluate, inference


def nll(run_dir, num_samples: int, examples: int) -> dict:
  """The run's K-sample test NLL (cached in the run directory)."""
  return common.cached_nll(
    run_dir / f"nll_{num_samples}_{examples}.json", run_dir, num_samples, examples
  )


def mean_sd(values) -> str:
  values = np.asarray(values, np.float64)
  return f"{values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def main() -> int:
  parser = common.parser(__doc__, "fashion", epochs=20)
  parser.set_defaults(dataset="fashion_mnist")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--models", nargs="+", default=["mlp", "conv"])
  parser.add_argument("--num-samples", type=int, default=5000)
  parser.add_argument("--nll-examples", type=int, default=0, help="test images per MLP (0: all)")
  parser.add_argument(
    "--conv-nll-examples", type=int, default=1000, help="test images per conv model"
  )
  parser.add_argument("--train-examples", type=int, default=0, help="0: the whole training split")
  args = parser.parse_args()
  start = time.perf_counter()
  splits = common.prepare(args)
  if args.train_examples:
    common.DATA["data.train_examples"] = args.train_examples
    common.DATA["data.test_examples"] = max(args.nll_examples, args.conv_nll_examples)
    splits = {
      s: (x[: common.DATA[f"data.{s}_examples"]], y[: common.DATA[f"data.{s}_examples"]])
      for s, (x, y) in splits.items()
    }
  rows, results = [], {"dataset": args.dataset, "epochs": args.epochs, "models": {}}
  for model in args.models:
    per_seed = []
    examples = args.conv_nll_examples if model == "conv" else args.nll_examples
    for seed in range(1, args.seeds + 1):
      run_dir = args.workdir / f"{model}_seed{seed}"
      t0 = time.perf_counter()
      _, _, records = common.train_model(
        run_dir,
        splits,
        {
          "model.name": model,
          "seed": seed,
          "optim.num_epochs": args.epochs,
          "data.binarize": True,
          "run.save_images": seed == 1,
        },
      )
      train_s = sum(r["train_seconds"] for r in records)
      estimate = nll(run_dir, args.num_samples, examples)
      per_seed.append(
        {
          "seed": seed,
          "test_neg_elbo_training_protocol": records[-1]["test_loss"],
          "train_seconds": train_s,
          "wall_seconds": time.perf_counter() - t0,
          **estimate,
        }
      )
      print(
        f"  {model} seed {seed}: test loss {records[-1]['test_loss']:.2f}, "
        f"NLL(K={args.num_samples}, {estimate['examples']} images) {estimate['test_nll']:.2f} "
        f"({estimate['seconds']:.0f} s)",
        flush=True,
      )
      if seed == 1:
        inference.sample(run_dir, args.workdir / f"{model}_samples.png", num=64, seed=0)
        inference.reconstruct(run_dir, args.workdir / f"{model}_reconstructions.png", num=16)
    results["models"][model] = per_seed
  # Every model on the same first N test images (N: the fewest any model was evaluated on),
  # so the models compare on one subset whatever each one's own count.
  shared = min(min(r["examples"] for r in runs) for runs in results["models"].values())
  for model, per_seed in results["models"].items():
    for r in per_seed:
      r["shared_nll"] = nll(args.workdir / f"{model}_seed{r['seed']}", args.num_samples, shared)[
        "test_nll"
      ]
    rows.append(
      [
        model,
        mean_sd([r["test_neg_elbo_training_protocol"] for r in per_seed]),
        mean_sd([r["test_neg_elbo"] for r in per_seed]),
        mean_sd([r["test_nll"] for r in per_seed]),
        f"{per_seed[0]['examples']}",
        mean_sd([r["shared_nll"] for r in per_seed]),
        f"{np.mean([r['active_units'] for r in per_seed]):.1f}",
        f"{np.mean([r['train_seconds'] for r in per_seed]) / args.epochs:.1f}",
        f"{np.mean([r['seconds'] for r in per_seed]):.0f}",
      ]
    )
  text = "\n".join(
    [
      f"{args.seeds} seeds x {args.epochs} epochs on dynamically binarized {args.dataset}; test set "
      f"binarized once with key({evaluate.BINARIZE_SEED}); nats per image, mean +- sd over seeds. "
      f"Wall time of the whole script: {time.perf_counter() - start:.0f} s.",
      "",
      common.markdown_table(
        [
          "model",
          "test loss on the continuous test pixels (metrics.jsonl)",
          "-ELBO (test set binarized with key(0))",
          f"NLL, K = {args.num_samples}",
          "test images (NLL)",
          f"NLL, first {shared} test images (every model)",
          "active units",
          "s / epoch",
          "s per NLL",
        ],
        rows,
      ),
    ]
  )
  common.write_report(
    args.workdir, "fashion", f"{args.dataset}: MLP and conv, binarized protocol", text, results
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
