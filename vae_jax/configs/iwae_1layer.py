"""Burda, Grosse and Salakhutdinov (2015), Table 1, one stochastic layer: the recipe.

  python -m vae_jax train --workdir runs/iwae_1layer_iwae_k5 \
      --config vae_jax/configs/iwae_1layer.py:iwae,5
  python -m vae_jax likelihood --workdir runs/iwae_1layer_iwae_k5 --num_samples 5000

The argument is OBJECTIVE,K[,STAGES]: 'vae' (vae_k: the k-sample ELBO) or 'iwae', k samples,
and the learning-rate stages i = 0..STAGES-1 (default 8: the paper's 3,280 epochs; STAGES
stages take (3**STAGES - 1) / 2 epochs). experiments/burda2015.py runs every cell.

784-200-200 (tanh) -> 50 Gaussian latents (sigma = exp of the head), 50-200-200 (tanh) ->
784 Bernoulli logits with the output bias at the logit of the training set's mean pixel;
dynamically binarized MNIST; Adam (0.9, 0.999, eps 1e-4), batch 20; stage i: 3**i epochs at
1e-3 * 10**(-i/7). Weights: flax's init (lecun normal, zero biases; whether the paper's
differs was not checked).
"""

import ml_collections

from vae_jax.configs import default

OBJECTIVES = {"vae": "vae_k", "iwae": "iwae"}


def parse_arg(arg: str | None) -> tuple[str, int, int]:
  """(objective name, k, stages) from 'OBJECTIVE,K[,STAGES]'."""
  parts = (arg or "iwae,1").split(",")
  if (
    len(parts) not in (2, 3)
    or parts[0] not in OBJECTIVES
    or not all(p.isdigit() for p in parts[1:])
  ):
    raise ValueError(
      f"config argument {arg!r}: expected OBJECTIVE,K[,STAGES] with OBJECTIVE one of "
      f"{', '.join(OBJECTIVES)}, e.g. iwae,5 or vae,50,4"
    )
  k, stages = int(parts[1]), int(parts[2]) if len(parts) == 3 else 8
  if k < 1 or stages < 1:
    raise ValueError(f"config argument {arg!r}: K and STAGES must be >= 1")
  return OBJECTIVES[parts[0]], k, stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  objective, k, stages = parse_arg(arg)
  config = default.get_config()
  config.data.binarize = True
  config.model.update(
    name="mlp",
    hidden_dim=200,
    num_hidden_layers=2,
    latent_dim=50,
    activation="tanh",
    std_head="log_std",
    output_bias="data_mean",
    init_scheme="flax",
  )
  config.objective.update(name=objective, num_samples=k)
  config.optim.update(
    batch_size=20,
    eps=1e-4,
    learning_rate=1e-3,
    lr_schedule="staged",
    lr_stage_growth=3,
    lr_stage_decay=10 ** (-1 / 7),
    num_epochs=(3**stages - 1) // 2,
  )
  config.run.update(save_images=False, checkpoint_every_seconds=600.0)
  return config
