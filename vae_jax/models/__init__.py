"""Models by name: an abstract VAE with encode / decode and one reparameterization.

A new architecture is one subclass of ``VAE`` that returns its encoder (x_BxHxWxC ->
mu_BxL, logvar_BxL) and decoder (z_BxL -> logits_BxHxWxC), registered with
``@register_model("name")``; its dataclass fields become ``config.model`` settings.
A model whose prior is not N(0, I) (a hierarchy of latents) overrides ``importance_terms``
and sets ``standard_prior = False``: it then trains with the importance-weighted objectives
(vae_k, iwae), which use nothing else. A model that sees the labels is a ``ConditionalVAE``
(models/conditional.py). Built in: ``mlp`` (the reference network, and the Burda et al.
(2015) one-stochastic-layer network by its settings), ``conv``, ``hvae2``, and the
conditional ``cmlp`` and ``cconv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.registry import ConfigError, Registry

if TYPE_CHECKING:
  from vae_jax.config import ConfigLike

REGISTRY = Registry("model", default="mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.compute_dtype
# Fields every VAE has that the run sets, not the config.
BUILT_FIELDS = ("image_shape", "learned_sigma", "likelihood", "parent", "name")
M = TypeVar("M", bound="VAE")  # A model class register_model returns as it was given.


def reparameterize(mu_BxL: jax.Array, logvar_BxL: jax.Array, eps_BxL: jax.Array) -> jax.Array:
  """z = mu + exp(0.5 * logvar) * eps: the sample is differentiable in mu and logvar."""
  return mu_BxL + jnp.exp(0.5 * logvar_BxL) * eps_BxL


class VAE(nn.Module):
  """Abstract VAE. ``__call__(x, key)`` -> (logits_BxHxWxC, mu_BxL, logvar_BxL).

  The noise is ``eps = normal(key, mu.shape)``, drawn from the caller's explicit key inside
  the traced graph; key=None gives z = mu. Outputs are float32 whatever ``compute_dtype``
  the layers use. ``learned_sigma`` adds a ``log_sigma`` parameter of the image's shape
  (Gaussian likelihood with learned per-pixel sigma). ``likelihood`` (the objective's, set by
  the run) decides the decoder's output: logits of ``output_shape``, H x W x (C x
  ``pixel_params``), its parameters per pixel, and ``mean_image`` the images they mean. Subclasses implement ``make_encoder`` and
  ``make_decoder`` (for ``output_shape``); ``decode`` accepts any leading axes (K x B x L).
  """

  # False: the prior is not N(0, I), so objectives with an analytic KL do not apply.
  standard_prior = True
  # True: every method takes the images' labels (models/conditional.py, ConditionalVAE).
  conditional = False

  image_shape: tuple[int, ...] = (28, 28, 1)
  learned_sigma: bool = False
  likelihood: str = "bernoulli"
  latent_dim: int = 20
  compute_dtype: str = "float32"

  def make_encoder(self) -> nn.Module:
    raise NotImplementedError

  def make_decoder(self) -> nn.Module:
    raise NotImplementedError

  def setup(self):
    self.encoder = self.make_encoder()
    self.decoder = self.make_decoder()
    if self.learned_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, self.image_shape)

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def pixel_params(self) -> int:
    """The likelihood's parameters per pixel: the decoder's channels per image channel."""
    return losses.PIXEL_PARAMS.get(self.likelihood, 1)

  @property
  def output_shape(self) -> tuple[int, ...]:
    """The decoder's logits per example: the image's, its channels times pixel_params."""
    return (*self.image_shape[:-1], self.image_shape[-1] * self.pixel_params)

  def mean_image(self, logits):
    """The likelihood's mean of each pixel from the decoder's logits (losses.mean_of)."""
    return losses.mean_of(logits, self.likelihood)

  @property
  def latent_layers(self) -> tuple[int, ...]:
    """Units of each stochastic layer, in the order ``encode`` returns them."""
    return (self.latent_dim,)

  def encode(self, x_BxHxWxC):
    mu_BxL, logvar_BxL = self.encoder(x_BxHxWxC)
    return mu_BxL.astype(jnp.float32), logvar_BxL.astype(jnp.float32)

  def decode(self, z_BxL):
    lead = z_BxL.shape[:-1]
    logits = self.decoder(z_BxL.reshape(-1, z_BxL.shape[-1]))
    return logits.reshape(*lead, *self.output_shape).astype(jnp.float32)

  def __call__(self, x_BxHxWxC, key: jax.Array | None = None):
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    if key is None:
      z_BxL = mu_BxL
    else:
      z_BxL = reparameterize(mu_BxL, logvar_BxL, jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype))
    return self.decode(z_BxL), mu_BxL, logvar_BxL

  def generate(self, z_BxL):
    """Images in [0, 1]: sigmoid of the decoder's (mean) logits."""
    return self.mean_image(self.decode(z_BxL))

  def importance_terms(self, x_BxHxWxC, eps_KxBxL):
    """(logits_KxBxHxWxC, log p(z)_KxB, log q(z|x)_KxB) for z = mu + sigma * eps (nats).

    The importance weight of sample k is p(x|z_k) p(z_k) / q(z_k|x); eps has one standard
    normal per unit of ``encode``'s output (zeros: z = mu).
    """
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    z_KxBxL = reparameterize(mu_BxL, logvar_BxL, eps_KxBxL)
    return (
      self.decode(z_KxBxL),
      losses.gaussian_log_density(z_KxBxL, 0.0, 0.0),
      losses.gaussian_log_density(z_KxBxL, mu_BxL, logvar_BxL),
    )

  def data_init(self, params, mean_image_HxWxC):
    """Parameters after the data-dependent part of the init (none here); mean_image_HxWxC is
    the training set's mean pixel in [0, 1]."""
    return params


def logit_bias(params, mean_image_HxWxC, clip: float = 1e-3):
  """params with the decoder's output bias at logit(mean pixel), the mean clipped to
  [clip, 1 - clip] (border pixels are 0 in every MNIST image): the decoder starts at the
  data's marginals (Burda et al., 2015)."""
  mean = jnp.clip(jnp.asarray(mean_image_HxWxC, jnp.float32).reshape(-1), clip, 1 - clip)
  decoder = params["decoder"]
  logits = {**decoder["logits"], "bias": jnp.log(mean) - jnp.log1p(-mean)}
  return {**params, "decoder": {**decoder, "logits": logits}}


def register_model(name: str, replace: bool = False) -> Callable[[type[M]], type[M]]:
  """Class decorator: registers a VAE subclass as ``config.model.name=name``.

  Its dataclass fields (but BUILT_FIELDS) are its settings, with their defaults: another
  model may have a field of the same name with another default. A name already taken is
  refused unless replace=True; a class that is not a VAE subclass is refused.
  """

  def decorate(cls: type[M]) -> type[M]:
    if not (isinstance(cls, type) and issubclass(cls, VAE)):
      raise ConfigError(f"register_model({name!r}): {cls!r} is not a subclass of vae_jax.VAE")
    settings = {
      f.name: f.default
      for f in dataclasses.fields(cls)
      if f.name not in BUILT_FIELDS and f.default is not dataclasses.MISSING
    }
    REGISTRY.register(name, cls, settings, replace=replace)
    return cls

  return decorate


def build_model(config: ConfigLike, image_shape: tuple[int, ...] = (28, 28, 1)) -> VAE:
  """The (unbound) VAE module a config describes, for images of image_shape (H, W, C).

  ``config``: a ConfigDict, dict or parsed config.Settings. Initialize it with
  ``module.init(key, x_1xHxWxC)``, or get a whole train state with vae_jax.create_state.
  """
  from vae_jax import config as config_lib, objectives

  settings = config if isinstance(config, config_lib.Settings) else config_lib.parse(config)
  return build(settings.model, image_shape, objectives.make_hparams(settings.objective))


def build(model: tuple[Any, dict[str, Any]], image_shape: tuple[int, ...], hparams=None) -> VAE:
  """The module for a resolved config.model (config.parse), the data's image shape and the
  objective's Hparams (its likelihood's learned sigma and parameters per pixel)."""
  entry, settings = model
  if settings.get("compute_dtype", "float32") not in DTYPES:
    raise ConfigError(
      f"config.model.compute_dtype={settings['compute_dtype']!r}: expected one of "
      f"{', '.join(DTYPES)}"
    )
  if settings.get("latent_dim", 1) < 1:
    raise ConfigError(f"config.model.latent_dim={settings['latent_dim']}: expected an integer >= 1")
  likelihood = getattr(hparams, "likelihood", "bernoulli")
  if settings.get("output_bias") == "data_mean" and likelihood in ("normal", *losses.PIXEL_PARAMS):
    raise ConfigError(
      f"config.model.output_bias='data_mean' sets the decoder's output to the logit of the mean "
      f"pixel, a mean through a sigmoid; likelihood {likelihood!r} has none (use 'init')"
    )
  module = entry.target(
    image_shape=tuple(image_shape),
    learned_sigma=getattr(hparams, "learned_sigma", False),
    likelihood=getattr(hparams, "likelihood", "bernoulli"),
    **settings,
  )
  check = getattr(module, "check", None)
  if check is not None:
    check()
  return module


from vae_jax.models import (  # noqa: E402,F401  (registers the built-in models)
  conditional,
  conv,
  hierarchical,
  mlp,
)
