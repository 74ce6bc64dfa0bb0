"""How does the test ELBO change with the hidden width?

Run (about 5 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/hidden_width.py --workdir runs/ablations/hidden_width
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
Widths change shapes: three groups of 3 vmapped seeds.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  study = ml_collections.ConfigDict()
  study.name = "hidden_width"
  study.question = "How does the test ELBO change with the hidden width?"
  study.base = ml_collections.ConfigDict({"num_epochs": 10})
  study.axes = ml_collections.ConfigDict({"hidden_dim": [200, 400, 800]})
  study.seeds = 3
  return study
