"""The von Mises-Fisher posterior of the hyperspherical VAE (Davidson et al., 2018).

q(z|x) = C_m(kappa) exp(kappa mu.z) on the unit sphere S^(m-1) in R^m (m = latent_dim),
C_m(kappa) = kappa^v / ((2 pi)^(m/2) I_v(kappa)), v = m/2 - 1. Draws use Wood's (1994)
rejection sampler for w = mu.z, run inside the compiled program, then a uniform direction
orthogonal to e1 and the Householder reflection taking e1 to mu. Bessel functions are
computed in float32 in jax (no host callback), so everything here is jit-able and
differentiable in kappa.

Gradients of a draw (the paper's Section 3 and Appendix D; Naesseth et al., 2017): the
accepted eps ~ Beta((m-1)/2, (m-1)/2) has density pi(eps|kappa) = s(eps) g(h)/r(h), so
d/dkappa E[f(z)] = g_rep + g_cor with g_rep = E[f'(z) dz/dkappa] at fixed eps (w = h(eps,
kappa)) and g_cor = E[f(z) d/dkappa log(g/r)] (the explicit form: Appendix D.2). The paper's
experiments use g_rep alone: the authors report that including g_cor did not change their
results and was at times problematic, as Naesseth et al. note it can often be omitted
(nicola-decao/s-vae-pytorch issues #7 and #15; their released code has no g_cor). So the z
returned here carries g_rep only, as the paper's model. That estimator is biased (at m = 3,
kappa = 1: d/dkappa E[mu.z] is 0.276, g_rep's expectation 0.221; 1% at kappa = 100, and less
as m grows, where Wood's acceptance rate goes to 1). ``vmf_sample`` also returns
log pi(eps|kappa) = log q_w(h(eps, kappa)|kappa) + log|dh/deps| (which is log(g/r) up to
log s(eps), constant in kappa): adding ``score_surrogate(f, log_pi)`` to an objective adds
g_cor and makes the gradient unbiased; the tests check both.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.posteriors import Posterior, register_posterior
from vae_jax.priors.spherical import log_sphere_area
from vae_jax.registry import ConfigError

DEBYE_MIN_ORDER = 20.0  # Debye's expansion (u1..u4) has relative error ~1e-7 from here up.
MAX_TRIES = 1000  # Wood's acceptance rate is >= ~0.5: this caps only a NaN kappa's loop.

_U = (  # Debye's polynomials u_k(p) = sum c_j p^j (Abramowitz & Stegun 9.3.9).
  {1: 3 / 24, 3: -5 / 24},
  {2: 81 / 1152, 4: -462 / 1152, 6: 385 / 1152},
  {3: 30375 / 414720, 5: -369603 / 414720, 7: 765765 / 414720, 9: -425425 / 414720},
  {
    4: 4465125 / 39813120,
    6: -94121676 / 39813120,
    8: 349922430 / 39813120,
    10: -446185740 / 39813120,
    12: 185910725 / 39813120,
  },
)


def _debye(n: float, x):
  """Debye's uniform expansion of I_n(x), static order n >= ~20, as its pieces (r^2, gap, ell,
  log series, log F_n): with r = sqrt(n^2 + x^2), gap = r - x = n^2/(r + x) and
  ell = log1p((n + gap)/x), log(I_n e^-x) = gap - n ell - log(2 pi r)/2 + log series (no
  overflow at x = 1e5); F_n = I_n(x) Gamma(n+1) / (x/2)^n -> 1 as x -> 0 keeps small x free of
  large cancelling logs (Stirling's remainder of lgamma(n+1) is a float64 constant)."""
  r2 = n * n + x * x
  r = jnp.sqrt(r2)
  p = n / r
  series: jax.Array | float = 1.0
  for k, coefs in enumerate(_U, start=1):
    series = series + sum(c * p**j for j, c in coefs.items()) / n**k
  log_series = jnp.log(series)
  gap = n * n / (r + x)
  ell = jnp.log1p((n + gap) / x)
  stirling = math.lgamma(n + 1.0) - n * math.log(n) + n - 0.5 * math.log(2 * math.pi * n)
  excess = x * x / (r + n)  # r - n
  log_f = excess - n * jnp.log1p(excess / (2.0 * n)) - 0.25 * jnp.log1p((x / n) ** 2)
  return r2, gap, ell, log_series, log_f + log_series + stirling


def _log_scaled(n: float, parts):
  """log(I_n(x) e^-x) from ``_debye``'s pieces."""
  r2, gap, ell, log_series, _ = parts
  return gap - n * ell - 0.25 * jnp.log(r2) - 0.5 * math.log(2 * math.pi) + log_series


def _bessel_terms(v: float, kappa):
  """(log(I_v(kappa) e^-kappa), I_{v+1}/I_v, 1 - I_{v+1}/I_v, log F_v(kappa), kappa < n): Debye at the order
  n = v + N >= 20 (N static), then the downward recurrence I_{n-1} = (2n/x) I_n + I_{n+1}
  carried as ratios r_{n-1} = x/(2n + x r_n) (all terms positive: stable), with
  s = 1 - r carried alongside so that kappa (1 - A) keeps its precision at large kappa.
  Below x = n the logs are accumulated on F (log F_{n-1} = log F_n + log1p(x r_n / 2n)),
  above it on the scaled form (log I_{n-1} = log I_n - log r_{n-1})."""
  x = jnp.asarray(kappa, jnp.float32)
  steps = max(0, math.ceil(DEBYE_MIN_ORDER - v))
  top = v + steps
  small = x < top
  at_top, at_next = _debye(top, x), _debye(top + 1.0, x)
  f_top, scaled_top = at_top[4], _log_scaled(top, at_top)
  # log(I_{top+1}/I_top) < 0, differenced piece by piece (its size is ~1/x at large x).
  scaled_diff = (
    (at_next[1] - at_top[1])
    - ((top + 1.0) * at_next[2] - top * at_top[2])
    - 0.25 * jnp.log1p((2.0 * top + 1.0) / at_top[0])
    + (at_next[3] - at_top[3])
  )
  f_diff = jnp.log(0.5 * x) - math.log(top + 1.0) + at_next[4] - f_top
  log_ratio = jnp.where(small, f_diff, scaled_diff)
  ratio, one_minus = jnp.exp(log_ratio), -jnp.expm1(log_ratio)
  log_f, log_scaled = f_top, scaled_top
  for j in range(steps):  # from r_top down to r_v
    n = top - j  # r_{n-1} from r_n
    denom = 2.0 * n + x * ratio
    log_f = log_f + jnp.log1p(x * ratio / (2.0 * n))
    ratio, one_minus = x / denom, (2.0 * n - x * one_minus) / denom
    log_scaled = log_scaled - jnp.log(ratio)  # I_{n-1} = I_n / r_{n-1}
  from_f = v * jnp.log(0.5 * x) - math.lgamma(v + 1.0) + log_f - x
  return jnp.where(small, from_f, log_scaled), ratio, one_minus, log_f, small


def log_ive_and_ratio(v: float, kappa):
  """(log(I_v(kappa) e^-kappa), I_{v+1}(kappa)/I_v(kappa)) for a static order v >= 0 and
  kappa > 0, in float32: finite from kappa = 1e-4 to 1e5 and differentiable in kappa."""
  log_ive, ratio, _, _, _ = _bessel_terms(float(v), kappa)
  return log_ive, ratio


def vmf_log_normalizer(kappa, dim: int):
  """log C_m(kappa) + kappa = v log kappa - (m/2) log(2 pi) - log(I_v(kappa) e^-kappa): the
  log-density at the mode, kept apart from kappa (mu.z - 1) so that neither overflows."""
  v = 0.5 * dim - 1.0
  log_ive, _ = log_ive_and_ratio(v, kappa)
  return v * jnp.log(kappa) - 0.5 * dim * math.log(2 * math.pi) - log_ive


def vmf_log_prob(z_NxL, mu_NxL, kappa_N):
  """log q(z) = log C_m(kappa) + kappa mu.z, written (log C_m + kappa) + kappa (mu.z - 1)."""
  cos_N = jnp.sum(z_NxL * mu_NxL, -1)
  return vmf_log_normalizer(kappa_N, z_NxL.shape[-1]) + kappa_N * (cos_N - 1.0)


def vmf_kl_to_uniform(kappa_B, dim: int):
  """KL(vMF(mu, kappa) || Uniform(S^(dim-1))) per example = -H + log area(S^(dim-1)) =
  kappa (A - 1) + v log kappa - (dim/2) log(2 pi) - log_ive + log_sphere_area(dim), A =
  I_{dim/2}/I_{dim/2-1}, with 1 - A carried by the recurrence (exact at large kappa). Below
  kappa = n (Debye's order) the same is written kappa A - log F_v(kappa), F_v = I_v Gamma(v+1) /
  (kappa/2)^v (the constants cancel exactly), so the small KL of a small kappa keeps its
  digits instead of being a difference of two logs of the sphere's area."""
  v = 0.5 * dim - 1.0
  log_ive, ratio, one_minus, log_f, small = _bessel_terms(v, kappa_B)
  large = (
    v * jnp.log(kappa_B)
    - 0.5 * dim * math.log(2 * math.pi)
    - log_ive
    + log_sphere_area(dim)
    - kappa_B * one_minus
  )
  return jnp.where(small, kappa_B * ratio - log_f, large)


def vmf_entropy(kappa_B, dim: int):
  """H = -log C_m(kappa) - kappa A_m(kappa) = log area(S^(dim-1)) - KL to the uniform."""
  return log_sphere_area(dim) - vmf_kl_to_uniform(kappa_B, dim)


def _wood_terms(log_eps, log_1m_eps, kappa, dim: int):
  """Wood's quantities from eps (given by its logs, exact near 0 and 1) and kappa:
  (w, sqrt(1 - w^2), log acceptance ratio, log|dw/deps|, log(1 - w^2), w - 1), written in
  b and t = 1 - (1 - b) eps so that none cancels at large kappa."""
  eps, eps_c = jnp.exp(log_eps), jnp.exp(log_1m_eps)
  b = (dim - 1.0) / (2.0 * kappa + jnp.sqrt(4.0 * kappa * kappa + (dim - 1.0) ** 2))
  t = eps_c + b * eps
  w_minus_1 = -2.0 * b * eps / t
  w = (eps_c - b * eps) / t
  log_1mw2 = math.log(4.0) + jnp.log(b) + log_eps + log_1m_eps - 2.0 * jnp.log(t)
  sin = 2.0 * jnp.sqrt(b * eps * eps_c) / t
  # kappa w + (m-1) log(1 - x0 w) - c, with x0 = (1-b)/(1+b), c = kappa x0 + (m-1) log(1-x0^2):
  log_accept = 2.0 * kappa * b * (eps_c - eps) / ((1.0 + b) * t) + (dim - 1.0) * jnp.log(
    (1.0 + b) / (2.0 * t)
  )
  log_jac = jnp.log(2.0 * b) - 2.0 * jnp.log(t)
  return w, sin, log_accept, log_jac, log_1mw2, w_minus_1


def beta_logs(g_M):
  """(log eps, log(1 - eps)) of eps ~ Beta((m-1)/2, (m-1)/2) from g ~ N(0, I_m): eps = (1 + t)/2,
  t = g1/|g| the first coordinate of a uniform point on S^(m-1), whose density
  (1 - t^2)^((m-3)/2) is that Beta's. The smaller side uses 1 - |t| = |g_2:|^2/(|g|(|g| + |g1|)),
  exact near eps = 0 or 1."""
  rest2 = jnp.sum(g_M[1:] * g_M[1:])
  norm = jnp.sqrt(g_M[0] * g_M[0] + rest2)
  log_far = jnp.log1p(jnp.abs(g_M[0]) / norm) - math.log(2.0)  # log((1 + |t|)/2)
  log_near = jnp.log(rest2) - jnp.log(norm) - jnp.log(norm + jnp.abs(g_M[0])) - math.log(2.0)
  positive = g_M[0] >= 0
  return jnp.where(positive, log_far, log_near), jnp.where(positive, log_near, log_far)


def wood_eps(key, kappa, dim: int):
  """The accepted (log eps, log(1 - eps)) of Wood's sampler for one example: a while_loop
  drawing, from fold_in(key, try), m + 1 normals: eps ~ Beta((m-1)/2, (m-1)/2) from the first m
  (``beta_logs``) and u = Phi(last) ~ U(0,1), until kappa w + (m-1) log(1 - x0 w) - c >= log u
  (one draw per try keeps the compiled loop small). Not differentiated: the caller
  recomputes w = h(eps, kappa) at the accepted eps."""
  kappa = jax.lax.stop_gradient(kappa)

  def cond(state):
    tries, done, _, _ = state
    return jnp.logical_and(~done, tries < MAX_TRIES)

  def body(state):
    tries, _, _, _ = state
    g = jax.random.normal(jax.random.fold_in(key, tries), (dim + 1,))
    log_eps, log_1m_eps = beta_logs(g[:dim])
    log_accept = _wood_terms(log_eps, log_1m_eps, kappa, dim)[2]
    done = log_accept >= jax.scipy.special.log_ndtr(g[dim])  # log u, u = Phi(g)
    return tries + 1, done, log_eps, log_1m_eps

  start = (jnp.int32(0), jnp.bool_(False), jnp.float32(-math.log(2)), jnp.float32(-math.log(2)))
  _, _, log_eps, log_1m_eps = jax.lax.while_loop(cond, body, start)
  return log_eps, log_1m_eps


def householder(x_NxL, mu_NxL):
  """Reflects x by the Householder map taking e1 to mu (the identity where mu = e1)."""
  u_NxL = mu_NxL.at[..., 0].add(-1.0)  # mu - e1
  norm2 = jnp.sum(u_NxL * u_NxL, -1, keepdims=True)
  safe = norm2 > 1e-12
  scale = jnp.where(safe, 2.0 * jnp.sum(x_NxL * u_NxL, -1, keepdims=True), 0.0)
  return x_NxL - scale / jnp.where(safe, norm2, 1.0) * u_NxL


def vmf_sample(key, mu_BxL, kappa_B, num_samples: int):
  """(z_KxBxL, log q(z|x)_KxB, log pi(eps|kappa)_KxB) of K draws per example. z carries
  g_rep (w = h(eps, kappa) at the accepted eps); log_pi is the accepted eps's log-density,
  for ``score_surrogate`` (g_cor). Deterministic given key; mu_BxL must be unit vectors."""
  dim = mu_BxL.shape[-1]
  batch = mu_BxL.shape[0]
  key_eps, key_dir = jax.random.split(key)
  kappa_KxB = jnp.broadcast_to(kappa_B, (num_samples, batch))
  keys = jax.random.split(key_eps, num_samples * batch)  # one loop per draw, flattened
  log_eps, log_1m_eps = jax.vmap(lambda k, c: wood_eps(k, c, dim))(keys, kappa_KxB.reshape(-1))
  log_eps, log_1m_eps = log_eps.reshape(kappa_KxB.shape), log_1m_eps.reshape(kappa_KxB.shape)
  w, sin, _, log_jac, log_1mw2, w_minus_1 = _wood_terms(
    jax.lax.stop_gradient(log_eps), jax.lax.stop_gradient(log_1m_eps), kappa_KxB, dim
  )
  g_KxBxD = jax.random.normal(key_dir, (num_samples, batch, dim - 1))
  v_KxBxD = g_KxBxD / jnp.linalg.norm(g_KxBxD, axis=-1, keepdims=True)
  x_KxBxL = jnp.concatenate([w[..., None], sin[..., None] * v_KxBxD], -1)
  z_KxBxL = householder(x_KxBxL, jnp.broadcast_to(mu_BxL, x_KxBxL.shape))
  log_q = vmf_log_normalizer(kappa_KxB, dim) + kappa_KxB * w_minus_1
  # The marginal of w: q_w = C_m e^(kappa w) (1 - w^2)^((m-3)/2) area(S^(m-2)).
  log_pi = log_q + 0.5 * (dim - 3.0) * log_1mw2 + log_sphere_area(dim - 1) + log_jac
  return z_KxBxL, log_q, log_pi


def score_surrogate(f_KxB, log_pi_KxB):
  """Zero in value; its gradient is f * d log pi (g_cor): add it to an objective whose
  integrand f is evaluated at vmf_sample's z to make the kappa gradient unbiased."""
  return jax.lax.stop_gradient(f_KxB) * (log_pi_KxB - jax.lax.stop_gradient(log_pi_KxB))


def direction(mu_BxL):
  """mu / |mu|: the vMF's mean direction from the encoder's mean head."""
  return mu_BxL / jnp.maximum(jnp.linalg.norm(mu_BxL, axis=-1, keepdims=True), 1e-12)


@register_posterior("vmf")
class VonMisesFisher(Posterior):
  """q(z|x) = vMF(mu / |mu|, kappa) on S^(latent_dim - 1), with the encoder's mean head as
  the direction and kappa = softplus(Dense(1)(h)) + 1 (the paper's code: kappa >= 1). The
  logvar head is unused. Draws carry g_rep only, as the paper's experiments (see the module
  docstring); kl is closed-form against the uniform prior on the sphere."""

  support = "sphere"
  density = True

  @nn.compact
  def concentration(self, h_BxH):
    """kappa_B from the encoder's last hidden layer (one Dense shared by __call__ and kl)."""
    return jax.nn.softplus(nn.Dense(1, name="kappa")(h_BxH)[..., 0]) + 1.0

  def log_prob(self, mu_BxL, logvar_BxL, h_BxH, z_KxBxL):
    return vmf_log_prob(z_KxBxL, direction(mu_BxL), self.concentration(h_BxH))

  def __call__(self, mu_BxL, logvar_BxL, h_BxH, key, num_samples):
    direction_BxL = direction(mu_BxL)
    kappa_B = self.concentration(h_BxH)
    if key is None:  # The mode, K copies, and its density.
      z_KxBxL = jnp.broadcast_to(direction_BxL, (num_samples, *direction_BxL.shape))
      log_q_B = vmf_log_normalizer(kappa_B, self.latent_dim)
      return z_KxBxL, jnp.broadcast_to(log_q_B, (num_samples, *log_q_B.shape))
    z_KxBxL, log_q_KxB, _ = vmf_sample(key, direction_BxL, kappa_B, num_samples)
    return z_KxBxL, log_q_KxB

  def kl(self, mu_BxL, logvar_BxL, h_BxH, prior):
    from vae_jax.priors.spherical import SphericalUniform

    if getattr(prior, "support", None) != "sphere":
      raise ConfigError(
        f"posterior 'vmf' lies on the sphere; prior {type(prior).__name__!r} does not"
        " (use config.prior.name=spherical_uniform)"
      )
    kappa_B = self.concentration(h_BxH)
    if not isinstance(prior, SphericalUniform):
      return None  # Another prior on the sphere: the objective estimates KL from samples.
    return vmf_kl_to_uniform(kappa_B, self.latent_dim)

  def check(self):
    if self.latent_dim < 2:
      raise ConfigError(
        f"config.model.latent_dim={self.latent_dim}: the vmf posterior needs latent_dim >= 2"
        " (z lies on the sphere S^(latent_dim - 1))"
      )
