"""Conditional VAEs: q(z|x, y) and p(x|y, z) with y one-hot (Sohn et al. 2015; the generative
model M2 of Kingma et al. 2014).

A conditional model is a ``ConditionalVAE`` subclass: its encoder is called as
``encoder(x_BxHxWxC, y_BxC)`` and its decoder receives ``[z, y]`` concatenated, so an
unconditional architecture whose encoder accepts ``y_BxC`` becomes conditional by inheriting
from both (``cmlp``, ``cconv`` below are four lines each). Every method takes ``labels``:
class indices (int, shape B) or rows of C class probabilities (float, B x C). A run binds
each batch's labels into ``apply_fn`` (``vae_jax.objectives.call``), so every objective
(elbo, iwae, ...) trains a conditional model unchanged. ``classifier_hidden > 0`` adds
q(y|x) (``classify``: an MLP on the flattened image, as Kingma et al.'s), which the ``m2``
objective (vae_jax/semisupervised.py) trains; sampling and decoding need no classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import VAE, register_model, reparameterize
from vae_jax.models.conv import Conv
from vae_jax.models.mlp import ACTIVATIONS, MLP
from vae_jax.posteriors.gaussian import gaussian_draws
from vae_jax.registry import ConfigError


class Classifier(nn.Module):
  """x_Bx... -> logits_BxC of q(y|x): one hidden layer of ``hidden_dim`` units, x flattened."""

  hidden_dim: int
  num_classes: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h_BxH = nn.Dense(self.hidden_dim, name="hidden")(x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1))
    return nn.Dense(self.num_classes, name="logits")(ACTIVATIONS[self.activation](h_BxH))


class ConditionalVAE(VAE):
  """A VAE whose encoder and decoder see the label y (one-hot of ``num_classes``)."""

  conditional = True
  latent_choice = False  # p(z) = N(0, I) and q(z | x, y) Gaussian (the M2 objective's).

  num_classes: int = 10
  classifier_hidden: int = 0  # Units of q(y|x)'s hidden layer; 0: no classifier.

  def check(self):
    parent_check = getattr(super(), "check", None)
    if parent_check is not None:
      parent_check()
    if self.num_classes < 2:
      raise ConfigError(f"config.model.num_classes={self.num_classes}: expected an integer >= 2")
    if self.classifier_hidden < 0:
      raise ConfigError(
        f"config.model.classifier_hidden={self.classifier_hidden}: expected 0 (no "
        "classifier) or a number of units"
      )

  def setup(self):
    super().setup()
    if self.classifier_hidden:
      self.classifier = self.make_classifier()

  def make_classifier(self) -> nn.Module:
    return Classifier(self.classifier_hidden, self.num_classes, getattr(self, "activation", "relu"))

  def one_hot(self, labels) -> jax.Array:
    """y_BxC from class indices (int) or class probabilities (float rows)."""
    if labels is None:
      raise ValueError(
        f"a conditional model ({type(self).__name__}) needs the labels of its images "
        "(labels=...: class indices or rows of class probabilities)"
      )
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
      return jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)

  def encode(self, x_BxHxWxC, labels=None):
    mu_BxL, logvar_BxL = self.encoder(x_BxHxWxC, self.one_hot(labels).astype(self.dtype))
    return mu_BxL.astype(jnp.float32), logvar_BxL.astype(jnp.float32)

  def encode_each_class(self, x_BxHxWxC, labels=None):
    """(mu, logvar) of q(z|x, y) for every class y: C*B rows, class-major (labels: ignored).

    What M2 needs of an unlabelled image; here the batch repeated once per class, and a
    model whose encoder can share the work across classes overrides it (cmlp)."""
    del labels
    batch = x_BxHxWxC.shape[0]
    x_CB = jnp.broadcast_to(x_BxHxWxC[None], (self.num_classes, *x_BxHxWxC.shape))
    y_CB = jnp.repeat(jnp.arange(self.num_classes, dtype=jnp.int32), batch)
    return self.encode(x_CB.reshape(-1, *x_BxHxWxC.shape[1:]), y_CB)

  def decode(self, z_BxL, labels=None):
    """logits for z with any leading axes (K x B x L); labels broadcast over them."""
    y = jnp.broadcast_to(self.one_hot(labels), (*z_BxL.shape[:-1], self.num_classes))
    return super().decode(jnp.concatenate([z_BxL, y.astype(z_BxL.dtype)], axis=-1))

  def __call__(self, x_BxHxWxC, key: jax.Array | None = None, labels=None):
    if self.is_initializing():  # model.init(key, x) builds every part, the classifier too.
      labels = jnp.zeros(x_BxHxWxC.shape[:1], jnp.int32) if labels is None else labels
      if self.classifier_hidden:
        self.classify(x_BxHxWxC)
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC, labels)
    if key is None:
      z_BxL = mu_BxL
    else:
      z_BxL = reparameterize(mu_BxL, logvar_BxL, jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype))
    return self.decode(z_BxL, labels), mu_BxL, logvar_BxL

  def generate(self, z_BxL, labels=None):
    return self.mean_image(self.decode(z_BxL, labels))

  def importance_terms(self, x_BxHxWxC, key, num_samples, labels=None):
    """As VAE.importance_terms, for p(x, z | y) / q(z | x, y)."""
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC, labels)
    z_KxBxL, log_q_KxB = gaussian_draws(mu_BxL, logvar_BxL, key, num_samples)
    return self.decode(z_KxBxL, labels), self.log_prior(z_KxBxL), log_q_KxB

  def elbo_terms(self, x_BxHxWxC, key, labels=None):
    """As VAE.elbo_terms, for q(z | x, y) and p(x | y, z): the closed-form Gaussian KL."""
    logits, mu_BxL, logvar_BxL = self(x_BxHxWxC, key, labels)
    return logits, losses.kl_per_example(mu_BxL, logvar_BxL), (mu_BxL, logvar_BxL)

  def posterior_point(self, x_BxHxWxC, labels=None):
    return self.encode(x_BxHxWxC, labels)[0]

  def classify(self, x_BxHxWxC, labels=None):
    """logits_BxC of q(y|x) (labels: ignored, accepted because a run binds them)."""
    del labels
    if not self.classifier_hidden:
      raise ConfigError(
        f"model {type(self).__name__} has no classifier q(y|x): set "
        "config.model.classifier_hidden to its hidden units (the m2 objective trains one)"
      )
    return self.classifier(x_BxHxWxC).astype(jnp.float32)


@register_model("cmlp")
class CMLP(ConditionalVAE, MLP):
  """The reference MLP, conditional: [x, y] -> encoder, [z, y] -> decoder (mlp's settings)."""

  def encode_each_class(self, x_BxHxWxC, labels=None):
    """Every class's q(z|x, y) with the first layer's x W_x computed once (mlp.Encoder)."""
    mu, logvar = self.encoder(x_BxHxWxC, each_class=self.num_classes)
    return mu.astype(jnp.float32), logvar.astype(jnp.float32)


@register_model("cconv")
class CConv(ConditionalVAE, Conv):
  """The conv model, conditional: y joins the flattened features and z (conv's settings)."""
