"""Which decoder likelihood: Bernoulli, continuous Bernoulli or a Gaussian with learned variance?

Run (about 5 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/likelihood.py --workdir runs/ablations/likelihood
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
Each test loss is that model's own negative ELBO (a Bernoulli mass, a continuous-Bernoulli
density, a Gaussian density with learned per-pixel sigma): the numbers are not on one scale
and only the ranking within a likelihood across seeds is meaningful; see the samples.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="likelihood",
    question="Which decoder likelihood: Bernoulli, continuous Bernoulli or a Gaussian with learned variance?",
    axes={"objective.likelihood": ["bernoulli", "continuous_bernoulli", "gaussian"]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
