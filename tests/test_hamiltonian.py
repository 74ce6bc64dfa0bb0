"""The Hamiltonian VAE (vae_jax/models/hamiltonian.py): the integrator's order and
reversibility, T = 0 is the ELBO, the extended weight's expectation is p(x) (a grid integral)."""

import jax
import jax.numpy as jnp
import numpy as np
from test_latents import PIXELS, _binary, _grid_log_likelihood, _mixture_log_pdf

from vae_jax import evaluate, models
from vae_jax.models.hamiltonian import inverse_sqrt_betas, leapfrog


def _energy_error(step_size: float, duration: float = 2.0) -> float:
  """|H(end) - H(start)| after leapfrog over a duration on the standard normal target."""
  grad = lambda z: -z  # d/dz log N(z; 0, I)
  z, rho = jnp.array([1.0, -0.5]), jnp.array([0.3, 0.8])
  energy = lambda z, rho: 0.5 * jnp.sum(z**2) + 0.5 * jnp.sum(rho**2)
  start = energy(z, rho)
  for _ in range(round(duration / step_size)):
    z, rho = leapfrog(z, rho, step_size, grad)
  return float(jnp.abs(energy(z, rho) - start))


def test_leapfrog_conserves_the_hamiltonian_to_second_order_and_is_reversible():
  coarse, fine = _energy_error(0.1), _energy_error(0.05)
  assert 3.0 < coarse / fine < 5.0  # Halving the step quarters the error: order 2.
  grad = lambda z: -z * jnp.array([1.0, 4.0])  # An anisotropic Gaussian.
  z0, rho0 = jnp.array([0.7, -1.2]), jnp.array([-0.4, 0.9])
  z, rho = z0, rho0
  for _ in range(10):
    z, rho = leapfrog(z, rho, 0.1, grad)
  z, rho = z, -rho  # Negate the momentum and integrate again: back to the start.
  for _ in range(10):
    z, rho = leapfrog(z, rho, 0.1, grad)
  np.testing.assert_allclose(z, z0, atol=1e-5)
  np.testing.assert_allclose(-rho, rho0, atol=1e-5)


def test_the_tempering_schedule_ends_at_temperature_one():
  scales = np.asarray(inverse_sqrt_betas(jnp.float32(0.25), 4))
  np.testing.assert_allclose(scales[[0, -1]], [2.0, 1.0], rtol=1e-6)
  assert np.all(np.diff(scales) < 0)


def _build(**settings):
  entry = models.REGISTRY.get("hamiltonian")
  vae = models.build(
    (entry, {**entry.settings, "latent_dim": 2, "hidden_dim": 8, **settings}), (PIXELS, 1, 1)
  )
  return vae, vae.init(jax.random.key(0), jnp.zeros((3, PIXELS, 1, 1)))["params"]


def test_with_no_leapfrog_step_the_bound_is_the_gaussian_elbo():
  ham, params = _build(leapfrog_steps=0)
  mlp = models.build(
    (
      models.REGISTRY.get("mlp"),
      {**models.REGISTRY.get("mlp").settings, "latent_dim": 2, "hidden_dim": 8},
    ),
    (PIXELS, 1, 1),
  )
  shared = {k: v for k, v in params.items() if k in ("encoder", "decoder")}
  x, key = jnp.asarray(_binary(4)), jax.random.key(1)
  _, log_p, log_q = ham.apply({"params": params}, x, key, 3, method="importance_terms")
  key_z = jax.random.split(key)[0]  # The draw of z0; rho0's key is the other half.
  _, log_p0, log_q0 = mlp.apply({"params": shared}, x, key_z, 3, method="importance_terms")
  np.testing.assert_allclose(log_p - log_q, log_p0 - log_q0, rtol=1e-5, atol=1e-5)


def test_the_extended_weight_is_unbiased_for_p_x():
  # beta0 = 0.9: the tempering's Jacobian, (d/2) log beta0 = -0.105 nats, is 3x the tolerance.
  vae, params = _build(leapfrog_steps=2, init_step_size=0.3, init_beta0=0.9)
  x = _binary(3, seed=1)
  axis = np.linspace(-8, 8, 321)
  grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
  exact = _grid_log_likelihood(
    vae,
    params,
    x,
    lambda z: _mixture_log_pdf(z, np.zeros((1, 2)), np.zeros((1, 2))),
    grid,
    2 * np.log(axis[1] - axis[0]),
  )
  estimate = evaluate.iwae_log_likelihood(params, vae.apply, x, jax.random.key(2), 8000)
  np.testing.assert_allclose(estimate["iwae"], exact, atol=0.03)


def test_training_differentiates_through_the_dynamics_to_the_step_sizes_and_beta0():
  vae, params = _build(leapfrog_steps=3)
  x = jnp.asarray(_binary(4))

  def bound(p):
    _, log_p, log_q = vae.apply({"params": p}, x, jax.random.key(3), 1, method="importance_terms")
    logits = vae.apply({"params": p}, x, jax.random.key(3), 1, method="importance_terms")[0]
    log_px = -jnp.sum(
      jnp.logaddexp(0.0, -logits) * x[None] + jnp.logaddexp(0.0, logits) * (1 - x[None])
    )
    return log_px + jnp.sum(log_p - log_q)

  grads = jax.grad(bound)(params)
  for name in ("log_step_size", "beta0_logit"):
    assert np.isfinite(grads[name]).all() and np.abs(grads[name]).max() > 0
