"""How does the test ELBO change with the latent size?

Run (about 7 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/latent_size.py --workdir runs/ablations/latent_size
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
Latent sizes change array shapes: five groups, each of 3 vmapped seeds.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="latent_size",
    question="How does the test ELBO change with the latent size?",
    axes={"model.latent_dim": [2, 5, 10, 20, 50]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
