"""What does the KL weight beta trade between rate (KL) and distortion (BCE)?

Run (about 6 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/beta.py --workdir runs/ablations/beta
Writes results.csv, summary.md, test_loss.png, rate_distortion.png and runs/<setting>/seed<k>/metrics.jsonl.
All 15 models (5 betas x 3 seeds) train in one group (beta is traced). The test loss reported is
the ELBO (beta = 1) whatever the training beta.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="beta",
    question="What does the KL weight beta trade between rate (KL) and distortion (BCE)?",
    axes={"objective.beta": [0.25, 0.5, 1.0, 2.0, 4.0]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
