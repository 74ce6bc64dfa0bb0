"""Burda, Grosse and Salakhutdinov (2015), Table 1, two stochastic layers: the recipe.

  python -m vae_jax train --workdir runs/iwae_2layer_iwae_k5 \
      --config vae_jax/configs/iwae_2layer.py:iwae,5
  python -m vae_jax likelihood --workdir runs/iwae_2layer_iwae_k5 --num_samples 5000

The one-layer recipe (iwae_1layer.py: data, objective, Adam, schedule; the same argument
OBJECTIVE,K[,STAGES]) with the hierarchical model hvae2: q(h1|x) 784-200-200 -> 100,
q(h2|h1) 100-100-100 -> 50, p(h1|h2) 50-100-100 -> 100, p(x|h1) 100-200-200 -> 784, tanh.
"""

import ml_collections

from vae_jax.configs import iwae_1layer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = iwae_1layer.get_config(arg)
  config.model.update(name="hvae2", latent_dim_1=100, hidden_dim_2=100)
  return config
