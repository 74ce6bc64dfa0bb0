"""``hvae2``: two stochastic layers, the hierarchical VAE of Burda et al. (2015).

  q(h1|x) q(h2|h1),  p(h2) = N(0, I),  p(h1|h2) Gaussian,  p(x|h1) the decoder's logits.

Every conditional is an MLP block of ``num_hidden_layers`` layers (``activation``): x <-> h1
blocks have ``hidden_dim`` units, h1 <-> h2 blocks ``hidden_dim_2``; h1 has ``latent_dim_1``
units, h2 ``latent_dim`` (the prior's, so ``sample`` draws latent_dim numbers). The paper's
sizes (vae_jax/configs/iwae_2layer.py): 784-200-200-100, 100-100-100-50, tanh, sigma = exp.

The importance weight is p(x|h1) p(h1|h2) p(h2) / (q(h1|x) q(h2|h1)) with h1, h2 drawn in
turn; ``encode`` gives the posterior's units [h1, h2] along the deterministic path (h2's
Gaussian at h1 = its mean), which is what the active-unit count reads (the KL per unit that
``evaluate`` also prints is against N(0, 1): the model's own only for h2). The prior is not
N(0, I), so this model trains with the importance-weighted objectives (vae_k, iwae).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import VAE, logit_bias, register_model, reparameterize
from vae_jax.models.mlp import MLP, Encoder
from vae_jax.registry import ConfigError


def _gaussian(block: nn.Module, h_NxI):
  """(mu, logvar) of a Gaussian block for inputs with any leading axes, as float32."""
  mu, logvar = block(h_NxI.reshape(-1, h_NxI.shape[-1]))
  lead = h_NxI.shape[:-1]
  return mu.reshape(*lead, -1).astype(jnp.float32), logvar.reshape(*lead, -1).astype(jnp.float32)


@register_model("hvae2")
class HVAE2(VAE):
  """Two stochastic layers; settings as mlp's, plus h1's size and the inner blocks' width."""

  latent_choice = False  # Its own p(h1, h2) and q(h1, h2 | x),
  gaussian_kl = False  # whose KL is estimated from samples.

  hidden_dim: int = 400
  num_hidden_layers: int = 1
  init_scheme: str = "torch"
  activation: str = "relu"
  std_head: str = "logvar"
  output_bias: str = "init"
  latent_dim_1: int = 100
  hidden_dim_2: int = 100

  def check(self):
    MLP.check(self)
    for key in ("latent_dim_1", "hidden_dim_2"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.model.{key}={getattr(self, key)}: expected an integer >= 1")

  def setup(self):
    block = lambda width, out, name: Encoder(
      width,
      out,
      self.init_scheme,
      self.dtype,
      self.num_hidden_layers,
      self.activation,
      self.std_head,
      name=name,
    )
    self.q_h1 = block(self.hidden_dim, self.latent_dim_1, "q_h1")
    self.q_h2 = block(self.hidden_dim_2, self.latent_dim, "q_h2")
    self.p_h1 = block(self.hidden_dim_2, self.latent_dim_1, "p_h1")
    self.decoder = MLP.make_decoder(self)  # The reference MLP's decoder, from z1.
    self.setup_latents()  # N(0, I) on h2: sample_prior draws the top layer.
    if self.learned_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, self.image_shape)

  @property
  def latent_layers(self) -> tuple[int, ...]:
    return (self.latent_dim_1, self.latent_dim)

  def ancestral_draws(self, x_BxHxWxC, eps_KxBxE):
    """Ancestral draws (h1_KxBxL1, h2_KxBxL2) and their Gaussians' (mu, logvar) pairs."""
    q1 = _gaussian(self.q_h1, x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1))
    h1 = reparameterize(*q1, eps_KxBxE[..., : self.latent_dim_1])
    q2 = _gaussian(self.q_h2, h1)
    h2 = reparameterize(*q2, eps_KxBxE[..., self.latent_dim_1 :])
    return h1, h2, q1, q2

  def encode(self, x_BxHxWxC):
    """The posterior's units [h1, h2] (B x (L1 + L2)) along the deterministic path."""
    mu1, logvar1 = _gaussian(self.q_h1, x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1))
    mu2, logvar2 = _gaussian(self.q_h2, mu1)
    return jnp.concatenate([mu1, mu2], -1), jnp.concatenate([logvar1, logvar2], -1)

  def decode(self, z_BxE):
    """p(x|h1)'s logits from [h1, h2] (or h1 alone): only h1 reaches the pixels."""
    h1 = z_BxE[..., : self.latent_dim_1]
    lead = h1.shape[:-1]
    logits = self.decoder(h1.reshape(-1, self.latent_dim_1))
    return logits.reshape(*lead, *self.output_shape).astype(jnp.float32)

  def __call__(self, x_BxHxWxC, key: jax.Array | None = None):
    shape = (1, x_BxHxWxC.shape[0], self.latent_dim_1 + self.latent_dim)
    eps = jnp.zeros(shape) if key is None else jax.random.normal(key, shape)
    h1, h2, (mu1, logvar1), (mu2, logvar2) = self.ancestral_draws(x_BxHxWxC, eps)
    if self.is_initializing():  # p(h1|h2) is not on this path: create its parameters too.
      _gaussian(self.p_h1, h2)
    return (
      self.decode(h1[0]),
      jnp.concatenate([mu1, mu2[0]], -1),
      jnp.concatenate([logvar1, logvar2[0]], -1),
    )

  def generate(self, z_BxL):
    """Images from top-level codes h2: h1 at the mean of p(h1|h2), then sigmoid of p(x|h1)."""
    mu1, _ = _gaussian(self.p_h1, z_BxL)
    return self.mean_image(self.decode(mu1))

  def posterior_point(self, x_BxHxWxC):
    """[h1, h2] along the deterministic path (encode's means)."""
    return self.encode(x_BxHxWxC)[0]

  def importance_terms(self, x_BxHxWxC, key, num_samples):
    """(logits, log p(h1, h2), log q(h1, h2 | x)) for K ancestral draws: eps =
    normal(key, K x B x (L1 + L2)) (key None: zeros, the deterministic path)."""
    shape = (num_samples, x_BxHxWxC.shape[0], self.latent_dim_1 + self.latent_dim)
    eps_KxBxE = jnp.zeros(shape) if key is None else jax.random.normal(key, shape)
    h1, h2, q1, q2 = self.ancestral_draws(x_BxHxWxC, eps_KxBxE)
    log_p = losses.gaussian_log_density(h2, 0.0, 0.0) + losses.gaussian_log_density(
      h1, *_gaussian(self.p_h1, h2)
    )
    log_q = losses.gaussian_log_density(h1, *q1) + losses.gaussian_log_density(h2, *q2)
    return self.decode(h1), log_p, log_q

  def data_init(self, params, mean_image_HxWxC):
    return logit_bias(params, mean_image_HxWxC) if self.output_bias == "data_mean" else params
