"""The reference recipe: the PyTorch MNIST VAE example, exactly.

Run it:
  python -m vae_jax train --workdir runs/reference
Override any key in the ml_collections style, e.g.:
  python -m vae_jax train --workdir runs/z10 --config.latent_dim=10 --config.num_epochs=3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 1
  config.num_epochs = 10
  config.batch_size = 128
  config.eval_batch_size = 128  # The reference's test loader batch; sums do not depend on it.
  config.hidden_dim = 400
  config.latent_dim = 20
  config.learning_rate = 1e-3  # Adam, default betas (0.9, 0.999) and eps 1e-8.
  config.beta = 1.0  # Weight on KL; 1.0 is the reference ELBO.
  # Ablations (the reference: 0 and False). KL weight beta * min(1, step / warm-up steps);
  # dynamic binarization: inputs drawn as Bernoulli(pixel / 255) afresh at every step.
  config.kl_warmup_epochs = 0
  config.binarize = False
  # Objectives: likelihood 'bernoulli' (reference), 'continuous_bernoulli' or 'gaussian'
  # (gaussian_sigma: fixed sigma; 0: learned per pixel); free bits in nats per latent dim
  # (0: off); iwae_samples K of the importance-weighted bound (1: the ELBO); model 'vae'
  # or 'ae' (deterministic autoencoder: z = mu, no KL); num_hidden_layers per network.
  config.likelihood = "bernoulli"
  config.gaussian_sigma = 0.0
  config.free_bits = 0.0
  config.iwae_samples = 1
  config.model = "vae"
  config.num_hidden_layers = 1
  # Denoising: the encoder sees corrupted inputs ('gaussian': noise of sigma corruption_level,
  # clipped to [0, 1]; 'mask': that fraction of pixels set to 0), the loss scores the clean ones.
  config.corruption = "none"
  config.corruption_level = 0.0
  config.init = "torch"  # 'torch': U(+-1/sqrt(fan_in)) as nn.Linear; 'flax': lecun_normal / zeros.
  # Mixed precision: 'bfloat16' computes the layers in bf16 (for GPUs and TPUs); parameters,
  # optimizer state, noise and the loss stay float32.
  config.compute_dtype = "float32"

  # Data: 'bundled' (MNIST shipped with the package), 'idx' (data_dir of IDX files) or 'tfds'.
  config.data_source = "bundled"
  config.data_dir = ""
  config.tfds_name = "mnist"
  config.tfds_download = False  # Never download unless asked: offline machines must not hang.
  config.train_examples = 0  # 0: the whole split; N: the first N (quick runs, tests).
  config.test_examples = 0

  # Data parallelism: the batch is split over this many devices (0: all visible); parameters
  # are replicated. batch_size must be divisible by it.
  config.num_devices = 0

  # Checkpoints (workdir/checkpoints): the last keep_checkpoints epochs plus the best test loss.
  # Rerunning the same command on the workdir resumes from the latest; restart=True moves an
  # earlier run aside (workdir/replaced_<time>/) and starts afresh.
  config.keep_checkpoints = 2
  config.restart = False
  config.debug_nans = False  # jax_debug_nans: find the operation that made a NaN (slow).

  config.progress = True  # A progress bar while each compiled epoch runs.
  config.save_images = True  # reconstruction_N.png and sample_N.png each epoch.
  config.tensorboard = True  # workdir/tensorboard: scalars and grids, if tensorboardX is installed.
  return config
