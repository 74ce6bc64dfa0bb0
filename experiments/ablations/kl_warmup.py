"""Does a linear KL warm-up change the final test ELBO?

Run (about 4 minutes on the project's 2-core CPU; full MNIST, 10 epochs, 3 seeds):
  .venv/bin/python -m vae_jax sweep --config experiments/ablations/kl_warmup.py --workdir runs/ablations/kl_warmup
Writes results.csv, summary.md, test_loss.png and runs/<setting>/seed<k>/metrics.jsonl.
The KL weight rises linearly over the first N epochs (0: none); 9 models in one program.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  study = ml_collections.ConfigDict()
  study.name = "kl_warmup"
  study.question = "Does a linear KL warm-up change the final test ELBO?"
  study.base = ml_collections.ConfigDict({"num_epochs": 10})
  study.axes = ml_collections.ConfigDict({"kl_warmup_epochs": [0, 3, 6]})
  study.seeds = 3
  return study
