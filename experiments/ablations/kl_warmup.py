"""Does a linear KL warm-up change the final test ELBO?

Run (about 4 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/kl_warmup.py --workdir runs/ablations/kl_warmup
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
The KL weight rises linearly over the first N epochs (0: none); 9 models in one program.
"""

from vae_jax import sweep


def get_config():
  return sweep.make_study(
    name="kl_warmup",
    question="Does a linear KL warm-up change the final test ELBO?",
    axes={"objective.kl_warmup_epochs": [0, 3, 6]},
    seeds=3,
    base={"optim.num_epochs": 10},
  )
