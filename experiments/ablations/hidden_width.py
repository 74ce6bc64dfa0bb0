"""How does the test ELBO change with the hidden width?

Run (about 5 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/hidden_width.py --workdir runs/ablations/hidden_width
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
Widths change shapes: three groups of 3 vmapped seeds.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="hidden_width",
    question="How does the test ELBO change with the hidden width?",
    axes={"model.hidden_dim": [200, 400, 800]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
