"""The reference network (``mlp``): 784-400-(20, 20) encoder, 20-400-784 decoder, ReLU.

Its settings also give the one-stochastic-layer network of Burda et al. (2015): two tanh
layers of 200, 50 latents whose standard deviation is exp of the head's output
(``std_head='log_std'``), the output bias at the logit of the data's mean pixel
(vae_jax/configs/iwae_1layer.py).

The decoder returns logits: the loss uses the stable logits form of BCE and images apply
the sigmoid, which is the same model as the reference's sigmoid output layer. Images are
flattened on the way in and reshaped on the way out, so any H x W x C works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.models import VAE, logit_bias, register_model
from vae_jax.registry import ConfigError

INITS = ("torch", "flax")
ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "softplus": nn.softplus}
STD_HEADS = ("logvar", "log_std")  # What the second head outputs: log sigma^2 or log sigma.
OUTPUT_BIASES = ("init", "data_mean")  # The init scheme's, or logit of the mean pixel.


def torch_linear_init(fan_in: int) -> tuple[Callable, Callable]:
  """PyTorch nn.Linear's init: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5) gives exactly this bound for the weights.)
  """
  bound = 1.0 / jnp.sqrt(fan_in)

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return uniform, uniform


def dense(features: int, fan_in: int, init: str, name: str, dtype=jnp.float32) -> nn.Dense:
  """A Dense layer with the named init: 'torch' (the reference) or 'flax' (lecun_normal/zeros).

  Parameters are float32; ``dtype`` is what the layer computes in (bfloat16: mixed precision).
  """
  if init == "torch":
    kernel_init, bias_init = torch_linear_init(fan_in)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, name=name, dtype=dtype)
  if init == "flax":
    return nn.Dense(features, name=name, dtype=dtype)
  raise ValueError(f"init {init!r}: expected one of {INITS}")


def _hidden_name(i: int) -> str:
  """'hidden', 'hidden_2', ...: the reference's single layer keeps its name."""
  return "hidden" if i == 0 else f"hidden_{i + 1}"


def hidden_layers(h_BxH, module: nn.Module, first: int = 0):
  """module.num_hidden_layers Dense layers of module.hidden_dim (module.activation), named as
  the reference's (from layer ``first``: the layers before it computed by the caller)."""
  for i in range(first, module.num_hidden_layers):
    layer = dense(
      module.hidden_dim, h_BxH.shape[-1], module.init_scheme, _hidden_name(i), module.dtype
    )
    h_BxH = ACTIVATIONS[module.activation](layer(h_BxH))
  return h_BxH


class Encoder(nn.Module):
  """x_Bx... -> (mu_BxL, logvar_BxL) through num_hidden_layers layers (x flattened; a label
  y_BxC, given, joins the flattened x: q(z|x, y) of a conditional model).

  std_head 'log_std': the second head outputs log sigma (sigma = exp, as Burda et al.), so
  logvar is twice it; its parameters keep the name 'logvar'.
  """

  hidden_dim: int = 400
  latent_dim: int = 20
  init_scheme: str = "torch"
  dtype: jnp.dtype = jnp.float32
  num_hidden_layers: int = 1
  activation: str = "relu"
  std_head: str = "logvar"

  @nn.compact
  def __call__(self, x_BxHxWxC, y_BxC=None, each_class: int = 0, with_hidden: bool = False):
    """each_class = C > 0: y ignored, (mu, logvar) of x with every class y = 0..C-1 (C*B rows,
    class-major), the first layer's x part computed once: [x, y] W = x W_x + W_y[y].
    with_hidden: (mu, logvar, h_BxH), h the last hidden layer (a posterior family's context)."""
    h_BxD = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    if each_class:
      h_BxH = self.first_layer_each_class(h_BxD, each_class)
      h_BxH = hidden_layers(h_BxH, self, first=1)
    else:
      if y_BxC is not None:
        h_BxD = jnp.concatenate([h_BxD, y_BxC.astype(h_BxD.dtype)], axis=-1)
      h_BxH = hidden_layers(h_BxD, self)
    head = lambda name: dense(self.latent_dim, self.hidden_dim, self.init_scheme, name, self.dtype)
    mu_BxL, logvar_BxL = head("mu")(h_BxH), head("logvar")(h_BxH)
    logvar_BxL = 2 * logvar_BxL if self.std_head == "log_std" else logvar_BxL
    return (mu_BxL, logvar_BxL, h_BxH) if with_hidden else (mu_BxL, logvar_BxL)

  def first_layer_each_class(self, x_BxD, num_classes: int):
    """The first hidden layer of [x, y] for every class y: CB x H, class-major."""
    batch, width = x_BxD.shape
    layer = dense(
      self.hidden_dim, width + num_classes, self.init_scheme, _hidden_name(0), self.dtype
    )
    pre_x_BxH = layer(jnp.concatenate([x_BxD, jnp.zeros((batch, num_classes), x_BxD.dtype)], -1))
    # W_y's rows: the layer at [0, e_y] less the layer at [0, 0] (its bias, held in pre_x).
    y_Cp1xC = jnp.concatenate([jnp.eye(num_classes), jnp.zeros((1, num_classes))]).astype(
      x_BxD.dtype
    )
    pre_y_Cp1xH = layer(
      jnp.concatenate([jnp.zeros((num_classes + 1, width), x_BxD.dtype), y_Cp1xC], -1)
    )
    pre_CxBxH = pre_x_BxH[None] + (pre_y_Cp1xH[:num_classes] - pre_y_Cp1xH[num_classes])[:, None]
    return ACTIVATIONS[self.activation](pre_CxBxH).reshape(num_classes * batch, -1)


class Decoder(nn.Module):
  """z_BxL -> logits_BxD through num_hidden_layers layers; sigmoid(logits) is the image."""

  hidden_dim: int = 400
  output_dim: int = 784
  init_scheme: str = "torch"
  dtype: jnp.dtype = jnp.float32
  num_hidden_layers: int = 1
  activation: str = "relu"

  @nn.compact
  def __call__(self, z_BxL):
    h_BxH = hidden_layers(z_BxL, self)
    return dense(self.output_dim, self.hidden_dim, self.init_scheme, "logits", self.dtype)(h_BxH)


def hidden_features(encoder: nn.Module, x_BxHxWxC):
  """(mu, logvar, h) as float32 from an encoder called with ``with_hidden=True``."""
  return tuple(a.astype(jnp.float32) for a in encoder(x_BxHxWxC, with_hidden=True))


@register_model("mlp")
class MLP(VAE):
  """Fully connected VAE; the defaults are the reference (one hidden layer of 400, torch init)."""

  hidden_dim: int = 400
  num_hidden_layers: int = 1
  init_scheme: str = (
    "torch"  # 'torch': U(+-1/sqrt(fan_in)) as nn.Linear; 'flax': lecun_normal / zeros.
  )
  activation: str = "relu"  # Of the hidden layers: relu, tanh or softplus.
  std_head: str = "logvar"  # The encoder's second head: 'logvar' or 'log_std' (sigma = exp).
  output_bias: str = "init"  # 'init': the init scheme's; 'data_mean': logit of the mean pixel.

  def check(self):
    for key, allowed in (
      ("init_scheme", INITS),
      ("activation", ACTIVATIONS),
      ("std_head", STD_HEADS),
      ("output_bias", OUTPUT_BIASES),
    ):
      if getattr(self, key) not in allowed:
        raise ConfigError(
          f"config.model.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}"
        )
    for key in ("hidden_dim", "num_hidden_layers"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.model.{key}={getattr(self, key)}: expected an integer >= 1")

  def make_encoder(self):
    return Encoder(
      self.hidden_dim,
      self.latent_dim,
      self.init_scheme,
      self.dtype,
      self.num_hidden_layers,
      self.activation,
      self.std_head,
    )

  def make_decoder(self):
    return Decoder(
      self.hidden_dim,
      math.prod(self.output_shape),
      self.init_scheme,
      self.dtype,
      self.num_hidden_layers,
      self.activation,
    )

  def encode_features(self, x_BxHxWxC):
    return hidden_features(self.encoder, x_BxHxWxC)

  def data_init(self, params, mean_image_HxWxC):
    return logit_bias(params, mean_image_HxWxC) if self.output_bias == "data_mean" else params
