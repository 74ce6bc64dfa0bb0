"""What does beta-TCVAE's total-correlation weight do to the TC estimate, the KL and the ELBO?

Run (about 3 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 2 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/beta_tcvae.py --workdir runs/ablations/beta_tcvae
Writes results.csv (with train_tc, train_mi, train_dwkl: the minibatch-weighted-sampling
estimates, nats per example), summary.md, test_loss.png and runs/<setting>/seed<k>/. The TC
weight is traced, so all 6 models train in one group. The test loss is the ELBO.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="beta_tcvae",
    question="What does the total-correlation weight do to the TC estimate, the KL and the ELBO?",
    axes={"objective.tc_weight": [1.0, 4.0, 8.0]},
    seeds=2,
    base={"objective.name": "beta_tcvae", "optim.num_epochs": 10},
  )
