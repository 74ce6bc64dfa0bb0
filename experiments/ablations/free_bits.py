"""Do free bits (a KL floor per latent dimension) change the test ELBO and the KL?

Run (about 6 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/free_bits.py --workdir runs/ablations/free_bits
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
free_bits changes the objective, so each value is its own group of 3 vmapped seeds.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="free_bits",
    question="Do free bits (a KL floor per latent dimension) change the test ELBO and the KL?",
    axes={"objective.free_bits": [0.0, 0.25, 0.5, 1.0]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
