"""The reference recipe: the PyTorch MNIST VAE example, exactly.

Run it:
  python -m vae_jax train --workdir runs/reference
Override any key of a section, e.g.:
  python -m vae_jax train --workdir runs/z10 --config.model.latent_dim=10 --config.optim.num_epochs=3

Sections (vae_jax/config.py says what each key means): seed; data (source, name, dir,
train/test_examples, binarize); model (name: 'mlp', 'conv' or 'hvae2', and their settings);
objective (name: 'elbo', 'vae_k', 'iwae', 'ae', 'beta_tcvae', and their settings); optim
(Adam, batch, epochs, learning-rate schedule);
run (devices, checkpoints, progress, images, TensorBoard); plugins (modules of your own that
register models and objectives). The model and objective sections hold the entry's name and
the settings you give; each entry fills the rest from its own defaults (two entries may
share a key with different defaults), and a key the chosen entry does not have is refused.
A recipe builds on this one: ``config = default.get_config()``, then change what differs.
"""

import ml_collections

from vae_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  # Reference: seed 1; mlp 784-400-20 with PyTorch's nn.Linear init; Bernoulli ELBO, beta 1;
  # Adam 1e-3, batch 128, 10 epochs; bundled MNIST, pixels / 255.
  return config_lib.default_sections()
