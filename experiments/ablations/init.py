"""Does PyTorch's nn.Linear init or Flax's default init train better here?

Run (about 3 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/init.py --workdir runs/ablations/init
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
'torch': U(+-1/sqrt(fan_in)) for weights and biases; 'flax': lecun_normal weights, zero biases.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="init",
    question="Does PyTorch's nn.Linear init or Flax's default init train better here?",
    axes={"model.init_scheme": ["torch", "flax"]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
