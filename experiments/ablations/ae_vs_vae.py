"""A deterministic autoencoder against the VAE with the same architecture.

Run (about 3 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/ae_vs_vae.py --workdir runs/ablations/ae_vs_vae
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
The AE's test loss is its reconstruction BCE at z = mu (no KL); the VAE's is the one-sample
ELBO. Compare the AE with the VAE's test BCE column and its z = mu reconstruction.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="ae_vs_vae",
    question="A deterministic autoencoder against the VAE with the same architecture.",
    axes={"objective.name": ["elbo", "ae"]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
