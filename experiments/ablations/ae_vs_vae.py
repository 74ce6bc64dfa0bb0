"""A deterministic autoencoder against the VAE with the same architecture.

Run (about 3 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/ae_vs_vae.py --workdir runs/ablations/ae_vs_vae
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
The AE's test loss is its reconstruction BCE at z = mu (no KL); the VAE's is the one-sample
ELBO. Compare the AE with the VAE's test BCE column and its z = mu reconstruction.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  study = ml_collections.ConfigDict()
  study.name = "ae_vs_vae"
  study.question = "A deterministic autoencoder against the VAE with the same architecture."
  study.base = ml_collections.ConfigDict({"num_epochs": 10})
  study.axes = ml_collections.ConfigDict({"model": ['vae', 'ae']})
  study.seeds = 3
  return study
