"""A small convolutional VAE: two stride-2 convolutions and their transposes.

Run it (about 10 epochs on MNIST; the same recipe trains on 32x32x3 images):
  python -m vae_jax train --workdir runs/conv --config vae_jax/configs/conv.py
"""

from vae_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "conv"
  return config
