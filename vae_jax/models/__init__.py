"""Models by name: an abstract VAE with encode / decode, its prior and its posterior family.

A new architecture is one subclass of ``VAE`` that returns its encoder (x_BxHxWxC ->
mu_BxL, logvar_BxL) and decoder (z_BxL -> logits_BxHxWxC), registered with
``@register_model("name")``; its dataclass fields become ``config.model`` settings. The
prior p(z) (``config.prior``, vae_jax/priors/) and the posterior family q(z|x)
(``config.posterior``, vae_jax/posteriors/) are chosen apart from the model: the VAE builds
them as its ``prior`` and ``posterior`` submodules, and every objective and command reaches
them through ``importance_terms(x, key, K)`` (z, log p(z), log q(z|x)), ``elbo_terms``
(the KL in closed form where it exists, else from the sample), ``sample_prior`` and
``posterior_point``. A model with latents of its own (a hierarchy, ``hvae2``) overrides
these and sets ``latent_choice = False`` (it takes the default prior and posterior only) and
``gaussian_kl = False`` (its KL is estimated from samples).
A model that sees the labels is a ``ConditionalVAE`` (models/conditional.py). Built in:
``mlp`` (the reference network, and the Burda et al. (2015) one-stochastic-layer network by
its settings), ``dense`` (layers of any widths, plain or gated: the hyperspherical and
VampPrior papers' networks), ``conv``, ``hvae2``, and the conditional ``cmlp`` and ``cconv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses, posteriors, priors
from vae_jax.posteriors.gaussian import reparameterize
from vae_jax.registry import ConfigError, Registry, module_registrar

if TYPE_CHECKING:
  from vae_jax.config import ConfigLike

REGISTRY = Registry("model", default="mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.compute_dtype
# Fields every VAE has that the run sets, not the config.
BUILT_FIELDS = (
  "image_shape",
  "learned_sigma",
  "likelihood",
  "prior_spec",
  "posterior_spec",
  "parent",
  "name",
)
DEFAULT_PRIOR = ("normal", ())  # A prior_spec / posterior_spec: (name, sorted settings).
DEFAULT_POSTERIOR = ("gaussian", ())


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

  # False: the model defines its own latents, p(z) and q(z|x) (it overrides importance_terms
  # and elbo_terms), so config.prior and config.posterior must stay at their defaults.
  latent_choice = True
  # False: with the default prior and posterior the KL is still not the diagonal Gaussian's to
  # N(0, I) in closed form (a hierarchy's is estimated from samples).
  gaussian_kl = True
  # True: every method takes the images' labels (models/conditional.py, ConditionalVAE).
  conditional = False

  image_shape: tuple[int, ...] = (28, 28, 1)
  learned_sigma: bool = False
  likelihood: str = "bernoulli"
  latent_dim: int = 20
  compute_dtype: str = "float32"
  prior_spec: tuple = DEFAULT_PRIOR
  posterior_spec: tuple = DEFAULT_POSTERIOR

  def make_encoder(self) -> nn.Module:
    raise NotImplementedError

  def make_decoder(self) -> nn.Module:
    raise NotImplementedError

  def setup(self):
    self.encoder = self.make_encoder()
    self.decoder = self.make_decoder()
    self.setup_latents()
    if self.learned_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, self.image_shape)

  def setup_latents(self):
    """The prior and posterior submodules (parameterless for the defaults: the reference's
    parameters are the encoder's and decoder's alone)."""
    self.prior = priors.build(self.prior_spec, self.latent_dim, self.image_shape)
    self.posterior = posteriors.build(self.posterior_spec, self.latent_dim)

  @property
  def gaussian_posterior(self) -> bool:
    """Whether q(z|x) is encode's diagonal Gaussian itself (not a flow or a vMF)."""
    return posteriors.REGISTRY.get(self.posterior_spec[0]).target.gaussian

  @property
  def analytic_kl(self) -> bool:
    """Whether the KL is the diagonal Gaussian's to N(0, I) in closed form, from ``encode``'s
    (mu, logvar): the reference's ELBO, free bits and beta-TCVAE need it."""
    return (
      self.gaussian_kl
      and priors.REGISTRY.get(self.prior_spec[0]).target.standard
      and self.gaussian_posterior
    )

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

  def encode_features(self, x_BxHxWxC):
    """(mu_BxL, logvar_BxL, h_BxH): the encoder's Gaussian and a context for the posterior
    family (a flow's amortized parameters): here [mu, logvar]; mlp and conv give their last
    hidden layer."""
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    return mu_BxL, logvar_BxL, jnp.concatenate([mu_BxL, logvar_BxL], -1)

  def posterior_draws(self, x_BxHxWxC, key: jax.Array | None, num_samples: int):
    """(z_KxBxL, log q(z|x)_KxB) from the posterior family (key None: its deterministic code)."""
    return self.posterior(*self.encode_features(x_BxHxWxC), key, num_samples)

  def posterior_log_prob(self, x_BxHxWxC, z_KxBxL):
    """log q(z|x)_KxB at given z (a posterior family with a density: DReG's estimator)."""
    return self.posterior.log_prob(*self.encode_features(x_BxHxWxC), z_KxBxL)

  def posterior_point(self, x_BxHxWxC):
    """z_BxL: the posterior's deterministic code (the Gaussian's mean; a flow's image of it;
    the vMF's mean direction): what ``encode`` exports and the active units measure."""
    return self.posterior_draws(x_BxHxWxC, None, 1)[0][0]

  def log_prior(self, z_NxL):
    """log p(z) (nats, summed over L, leading axes kept) under the model's prior."""
    return self.prior.log_prob(z_NxL, self.encode)

  def sample_prior(self, key: jax.Array, num: int):
    """z_numxL drawn from the prior (N(0, I): normal(key, (num, L)), as the reference)."""
    return self.prior.sample(key, num, self.encode)

  def __call__(self, x_BxHxWxC, key: jax.Array | None = None):
    """(logits, mu, logvar) for one z per example: mu + sigma * normal(key, mu.shape) for the
    Gaussian posterior (the reference's draw), else the posterior family's draw."""
    mu_BxL, logvar_BxL = self.encode(x_BxHxWxC)
    if not self.gaussian_posterior:
      z_BxL = self.posterior_draws(x_BxHxWxC, key, 1)[0][0]
    elif key is None:
      z_BxL = mu_BxL
    else:
      z_BxL = reparameterize(mu_BxL, logvar_BxL, jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype))
    if self.is_initializing():  # model.init(key, x) creates the prior's parameters too.
      self.log_prior(z_BxL)
    return self.decode(z_BxL), mu_BxL, logvar_BxL

  def generate(self, z_BxL):
    """Images in [0, 1]: sigmoid of the decoder's (mean) logits."""
    return self.mean_image(self.decode(z_BxL))

  def importance_terms(self, x_BxHxWxC, key: jax.Array | None, num_samples: int):
    """(logits_KxBxHxWxC, log p(z)_KxB, log q(z|x)_KxB) for K draws z_k ~ q(z|x) (nats).

    The importance weight of sample k is p(x|z_k) p(z_k) / q(z_k|x). key None: K copies of
    the posterior's deterministic code.
    """
    z_KxBxL, log_q_KxB = self.posterior_draws(x_BxHxWxC, key, num_samples)
    return self.decode(z_KxBxL), self.log_prior(z_KxBxL), log_q_KxB

  def elbo_terms(self, x_BxHxWxC, key: jax.Array | None):
    """(logits_BxHxWxC, KL_B, gaussian): one z per example and KL(q(z|x) || p(z)) in nats,
    closed-form where the prior and posterior allow, else log q(z|x) - log p(z) at that z
    (the one-sample estimate; at key None, z is the posterior's code and the KL's estimate
    is drawn with the fixed key(0)). gaussian: encode's (mu, logvar) when the KL is the
    diagonal Gaussian's to N(0, I) (free bits needs it per unit), else None."""
    if self.analytic_kl:
      logits, mu_BxL, logvar_BxL = self(x_BxHxWxC, key)
      return logits, losses.kl_per_example(mu_BxL, logvar_BxL), (mu_BxL, logvar_BxL)
    logits_1, log_p_1xB, log_q_1xB = self.importance_terms(x_BxHxWxC, key, 1)
    kl_B = self.posterior_kl(x_BxHxWxC)
    if kl_B is None and key is None:  # At the code z*, log q - log p is no KL: estimate it
      _, log_p_1xB, log_q_1xB = self.importance_terms(x_BxHxWxC, jax.random.key(0), 1)
    return logits_1[0], (log_q_1xB - log_p_1xB)[0] if kl_B is None else kl_B, None

  def posterior_kl(self, x_BxHxWxC):
    """KL_B in closed form from the posterior family (vMF to the uniform prior), or None."""
    if not self.latent_choice:
      return None
    return self.posterior.kl(*self.encode_features(x_BxHxWxC), self.prior)

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


register_model = module_registrar(REGISTRY, VAE, BUILT_FIELDS)
register_model.__doc__ = """Class decorator: ``@register_model(name, replace=False)`` registers a VAE
subclass as ``config.model.name=name``; its dataclass fields (but BUILT_FIELDS) are its
settings, with their defaults. A name already taken is refused unless replace=True."""


def build_model(config: ConfigLike, image_shape: tuple[int, ...] = (28, 28, 1)) -> VAE:
  """The (unbound) VAE module a config describes, for images of image_shape (H, W, C).

  ``config``: a ConfigDict, dict or parsed config.Settings. Initialize it with
  ``module.init(key, x_1xHxWxC)``, or get a whole train state with vae_jax.create_state.
  """
  from vae_jax import config as config_lib, objectives

  settings = config if isinstance(config, config_lib.Settings) else config_lib.parse(config)
  return build(
    settings.model,
    image_shape,
    objectives.make_hparams(settings.objective),
    settings.prior,
    settings.posterior,
  )


def spec(resolved: tuple[Any, dict[str, Any]] | None, default: tuple) -> tuple:
  """A prior_spec / posterior_spec (name, sorted settings) from config.parse's (entry, settings)."""
  return default if resolved is None else (resolved[0].name, tuple(sorted(resolved[1].items())))


def check_latents(model_cls: Any, model_name: str, prior_entry, posterior_entry) -> None:
  """Refuses (one line) a prior and posterior that do not fit together or the model."""
  if not model_cls.latent_choice and (
    prior_entry.name != DEFAULT_PRIOR[0] or posterior_entry.name != DEFAULT_POSTERIOR[0]
  ):
    raise ConfigError(
      f"config.prior.name={prior_entry.name!r}, config.posterior.name={posterior_entry.name!r}: "
      f"model {model_name!r} defines its own prior and posterior (keep "
      f"{DEFAULT_PRIOR[0]!r} and {DEFAULT_POSTERIOR[0]!r})"
    )
  prior_support, posterior_support = prior_entry.target.support, posterior_entry.target.support
  if prior_support != posterior_support:
    fits = sorted(
      e.name for e in priors.REGISTRY.entries.values() if e.target.support == posterior_support
    )
    raise ConfigError(
      f"config.prior.name={prior_entry.name!r}: a prior on the {prior_support} for posterior "
      f"{posterior_entry.name!r} on the {posterior_support}; choose {', '.join(fits)}"
    )


def build(
  model: tuple[Any, dict[str, Any]],
  image_shape: tuple[int, ...],
  hparams=None,
  prior: tuple[Any, dict[str, Any]] | None = None,
  posterior: tuple[Any, dict[str, Any]] | None = None,
) -> VAE:
  """The module for a resolved config.model (config.parse), the data's image shape, the
  objective's Hparams (its likelihood's learned sigma and parameters per pixel) and the
  resolved config.prior and config.posterior (None: N(0, I) and the diagonal Gaussian)."""
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
    prior_spec=spec(prior, DEFAULT_PRIOR),
    posterior_spec=spec(posterior, DEFAULT_POSTERIOR),
    **settings,
  )
  check_latents(
    entry.target,
    entry.name,
    priors.REGISTRY.get(module.prior_spec[0]),
    posteriors.REGISTRY.get(module.posterior_spec[0]),
  )
  for part in (
    module,
    priors.build(module.prior_spec, module.latent_dim, module.image_shape),
    posteriors.build(module.posterior_spec, module.latent_dim),
  ):
    check = getattr(part, "check", None)
    if check is not None:
      check()
  return module


from vae_jax.models import (  # noqa: E402,F401  (registers the built-in models)
  conditional,
  conv,
  dense,
  hamiltonian,
  hierarchical,
  mlp,
)
