"""vae-jax: the classic MNIST VAE, reproduced exactly in JAX/Flax, as a research codebase."""

__version__ = "0.1.0"
