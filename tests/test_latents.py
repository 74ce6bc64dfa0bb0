"""Priors and posterior families (vae_jax/priors, vae_jax/posteriors), each against an
independent computation: scipy densities, jax.jacfwd's log-determinants, a grid integral."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import cli, make_model, run_cli_fresh, train_args
from scipy import special, stats
from test_checkpoint import assert_trees_equal_bitwise, metrics, saved_arrays

from vae_jax import evaluate, models, objectives, posteriors, priors, step
from vae_jax.posteriors.iaf import made_masks
from vae_jax.posteriors.planar import planar_step
from vae_jax.priors.spherical import log_sphere_area
from vae_jax.registry import ConfigError

PIXELS = 6


def _build(prior="normal", posterior="gaussian", latent_dim=2, prior_settings=None, **post):
  """(module, params) of a tiny mlp (6 pixels, 8 hidden units) with that prior and posterior."""
  mlp = models.REGISTRY.get("mlp")

  def chosen(registry, name, given):
    entry = registry.get(name)
    return entry, {**entry.settings, **(given or {})}

  vae = models.build(
    (mlp, {**mlp.settings, "latent_dim": latent_dim, "hidden_dim": 8}),
    (PIXELS, 1, 1),
    None,
    chosen(priors.REGISTRY, prior, prior_settings),
    chosen(posteriors.REGISTRY, posterior, post),
  )
  params = vae.init(jax.random.key(0), jnp.zeros((3, PIXELS, 1, 1)))["params"]
  return vae, params


def _binary(n, seed=0):
  return (np.random.RandomState(seed).rand(n, PIXELS, 1, 1) < 0.5).astype(np.float32)


def _mixture_log_pdf(z_NxL, means_KxL, logvars_KxL):
  """log (1/K) sum_k N(z; m_k, diag exp(s_k)) by scipy, float64."""
  log_N_NxK = stats.norm.logpdf(
    z_NxL[:, None, :], means_KxL[None], np.exp(0.5 * logvars_KxL)[None]
  ).sum(-1)
  return special.logsumexp(log_N_NxK, axis=1) - np.log(len(means_KxL))


def _log_prior(vae, params, z):
  return np.asarray(vae.apply({"params": params}, jnp.asarray(z), method="log_prior"))


def _pairs():
  """Every registered prior with every posterior family of the same support."""
  return [
    (p, q)
    for p, prior in sorted(priors.REGISTRY.entries.items())
    for q, posterior in sorted(posteriors.REGISTRY.entries.items())
    if prior.target.support == posterior.target.support
  ]


@pytest.mark.parametrize("prior,posterior", _pairs())
def test_every_prior_and_posterior_meet_the_latent_contract(prior, posterior):
  settings = (
    {"num_components": 3} if "num_components" in priors.REGISTRY.get(prior).settings else None
  )
  vae, params = _build(prior, posterior, latent_dim=3, prior_settings=settings)
  x, key = jnp.asarray(_binary(4)), jax.random.key(12)
  apply = jax.jit(lambda p, x, key: vae.apply({"params": p}, x, key, 5, method="importance_terms"))
  logits, log_p, log_q = apply(params, x, key)
  chex.assert_shape(logits, (5, 4, PIXELS, 1, 1))
  chex.assert_shape([log_p, log_q], (5, 4))
  chex.assert_tree_all_finite((logits, log_p, log_q))
  _, kl, _ = vae.apply({"params": params}, x, key, method="elbo_terms")
  chex.assert_shape(kl, (4,))
  z = vae.apply({"params": params}, jax.random.key(13), 7, method="sample_prior")
  chex.assert_shape(z, (7, 3))
  chex.assert_shape(vae.apply({"params": params}, x, method="posterior_point"), (4, 3))
  # The same key gives the same draws (explicit keys, no hidden state).
  chex.assert_trees_all_equal(apply(params, x, key), (logits, log_p, log_q))


def test_mixture_prior_log_density_matches_scipy():
  vae, params = _build("mog", prior_settings={"num_components": 3})
  rng = np.random.RandomState(1)
  means, logvars = rng.randn(3, 2), 0.5 * rng.randn(3, 2)
  params = {**params, "prior": {"means": jnp.asarray(means), "logvars": jnp.asarray(logvars)}}
  z = 2 * rng.randn(7, 2)
  np.testing.assert_allclose(
    _log_prior(vae, params, z), _mixture_log_pdf(z, means, logvars), rtol=1e-5
  )


def test_vamp_prior_is_the_mean_of_the_encoders_posteriors_at_the_pseudo_inputs():
  vae, params = _build("vamp", prior_settings={"num_components": 4})
  u = np.asarray(params["prior"]["pseudo_inputs"])
  chex.assert_shape(u, (4, PIXELS, 1, 1))
  # Pseudo-inputs outside [0, 1] are clipped, as the paper's hard-tanh does.
  u = u + np.array([-1.0, 0.0, 0.3, 2.0]).reshape(4, 1, 1, 1)
  params = {**params, "prior": {"pseudo_inputs": jnp.asarray(u)}}
  mu, logvar = vae.apply({"params": params}, jnp.clip(u, 0, 1), method="encode")
  z = np.random.RandomState(2).randn(5, 2)
  expected = _mixture_log_pdf(z, np.asarray(mu, np.float64), np.asarray(logvar, np.float64))
  np.testing.assert_allclose(_log_prior(vae, params, z), expected, rtol=1e-5)


def test_the_normal_prior_draws_exactly_the_references_noise():
  vae, params = _build()
  z = vae.apply({"params": params}, jax.random.key(5), 9, method="sample_prior")
  np.testing.assert_array_equal(z, jax.random.normal(jax.random.key(5), (9, 2)))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_sample_draws_from_the_chosen_prior(prior):
  vae, params = _build(prior, prior_settings={"num_components": 3})
  if prior == "mog":
    means, logvars = np.asarray(params["prior"]["means"]), np.asarray(params["prior"]["logvars"])
  else:
    u = jnp.clip(params["prior"]["pseudo_inputs"], 0, 1)
    means, logvars = map(np.asarray, vae.apply({"params": params}, u, method="encode"))
  n = 4000
  z = np.asarray(vae.apply({"params": params}, jax.random.key(6), n, method="sample_prior"))
  rng = np.random.RandomState(3)  # The same mixture drawn by numpy.
  k = rng.randint(0, 3, n)
  reference = means[k] + np.exp(0.5 * logvars[k]) * rng.randn(n, 2)
  for dim in range(2):
    assert stats.ks_2samp(z[:, dim], reference[:, dim]).pvalue > 1e-3
  # And the draws' density under the prior agrees with the mixture's (a consistency check).
  np.testing.assert_allclose(
    _log_prior(vae, params, z[:50]), _mixture_log_pdf(z[:50], means, logvars), rtol=1e-4
  )


def test_spherical_uniform_prior_draws_on_the_sphere_with_the_areas_density():
  vae, params = _build("spherical_uniform", "vmf", latent_dim=3)
  z = np.asarray(vae.apply({"params": params}, jax.random.key(7), 2000, method="sample_prior"))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  assert np.abs(z.mean(0)).max() < 0.06  # Uniform: no preferred direction.
  np.testing.assert_allclose(_log_prior(vae, params, z[:3]), -np.log(4 * np.pi), rtol=1e-6)
  assert log_sphere_area(2) == pytest.approx(np.log(2 * np.pi))


def _transform(vae, params, z0_L, h_H):
  """(z_T, log|det|) of the flow for one z0 and one example's context."""
  zT, logdet = vae.apply(
    {"params": params},
    z0_L[None, None],
    h_H[None],
    method=lambda module, z, h: module.posterior.transform(z, h),
  )
  return zT[0, 0], logdet[0, 0]


@pytest.mark.parametrize(
  "posterior,settings", [("planar", {"length": 3}), ("iaf", {"length": 2, "hidden_dim": 16})]
)
def test_flow_log_det_matches_the_jacobian(posterior, settings):
  vae, params = _build(posterior=posterior, latent_dim=3, **settings)
  x = jnp.asarray(_binary(2))
  _, _, h = vae.apply({"params": params}, x, method="encode_features")
  for i, z0 in enumerate(np.random.RandomState(4).randn(3, 3).astype(np.float32)):
    z0, h_H = jnp.asarray(z0), h[i % 2]
    jacobian = jax.jacfwd(lambda z: _transform(vae, params, z, h_H)[0])(z0)
    sign, expected = np.linalg.slogdet(np.asarray(jacobian, np.float64))
    assert sign != 0
    np.testing.assert_allclose(_transform(vae, params, z0, h_H)[1], expected, atol=1e-4)
    assert np.abs(np.asarray(jacobian) - np.eye(3)).max() > 1e-3  # Not the identity.


def test_an_iaf_step_is_autoregressive():
  vae, params = _build(posterior="iaf", latent_dim=4, length=1, hidden_dim=12)
  _, _, h = vae.apply({"params": params}, jnp.asarray(_binary(1)), method="encode_features")
  jacobian = np.asarray(jax.jacfwd(lambda z: _transform(vae, params, z, h[0])[0])(jnp.ones(4)))
  np.testing.assert_array_equal(np.triu(jacobian, 1), 0.0)  # z_i depends on z_<=i only.
  mask_in, mask_out = made_masks(4, 12)
  assert ((mask_in @ mask_out) * np.tril(np.ones((4, 4)))).sum() == 0  # Output i sees < i.


def test_planar_steps_are_invertible_even_where_w_dot_u_is_very_negative():
  rng = np.random.RandomState(5)
  for _ in range(5):
    u, w = rng.randn(1, 3) * 3, rng.randn(1, 3)
    u = u - 5 * w  # w.u far below -1: the raw step would fold; u_hat keeps w.u_hat >= -1.
    b = rng.randn(1)
    y = rng.randn(1, 1, 3)
    step = lambda z: planar_step(jnp.asarray(z, jnp.float32), u, w, b)[0]
    # Invert along w: a = w.z solves a + (w.u_hat) tanh(a + b) = w.y, increasing in a.
    wu = (w * u).sum()
    w_u_hat = wu + np.log1p(np.exp(wu)) - 1 - wu
    target = (w * y).sum()
    a = special.expit(0)  # Bisection on the monotone scalar map.
    lo, hi = -50.0, 50.0
    for _ in range(200):
      a = 0.5 * (lo + hi)
      lo, hi = (a, hi) if a + w_u_hat * np.tanh(a + b[0]) < target else (lo, a)
    u_hat = u + (w_u_hat - wu) * w / (w * w).sum()
    z = y - u_hat * np.tanh(a + b[0])
    np.testing.assert_allclose(step(z), y, atol=1e-4)
    assert w_u_hat >= -1


def test_a_flow_of_length_zero_is_the_gaussian_exactly():
  gaussian, params = _build()
  flow, flow_params = _build(posterior="planar", length=0)
  chex.assert_trees_all_equal(params, flow_params)  # No flow parameters at length 0.
  x, key = jnp.asarray(_binary(4)), jax.random.key(8)
  terms = gaussian.apply({"params": params}, x, key, 3, method="importance_terms")
  chex.assert_trees_all_equal(
    terms, flow.apply({"params": params}, x, key, 3, method="importance_terms")
  )
  # Its ELBO (log q - log p at the sample) is the Gaussian's one-sample ELBO: vae_k with K = 1.
  likelihood = objectives.Likelihood()
  elbo = objectives.REGISTRY.get("elbo").target
  vae_k = objectives.REGISTRY.get("vae_k").target
  flow_elbo, _ = elbo.fn(params, flow.apply, x, key, elbo.hparams_cls())
  one_sample = vae_k.fn(params, gaussian.apply, x, key, vae_k.hparams_cls(num_samples=1))[0]
  del likelihood
  np.testing.assert_allclose(flow_elbo, one_sample, rtol=1e-6)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_the_elbo_of_another_prior_is_log_q_minus_log_p_at_the_sample(prior):
  vae, params = _build(prior, prior_settings={"num_components": 3})
  x, key = jnp.asarray(_binary(4)), jax.random.key(9)
  logits, kl, gaussian = vae.apply({"params": params}, x, key, method="elbo_terms")
  assert gaussian is None  # No per-unit Gaussian KL: free bits is refused for it.
  logits_1, log_p, log_q = vae.apply({"params": params}, x, key, 1, method="importance_terms")
  np.testing.assert_allclose(kl, (log_q - log_p)[0], rtol=1e-6)
  np.testing.assert_allclose(logits, logits_1[0], rtol=1e-6)


def _grid_log_likelihood(vae, params, x_NxD, log_prior_fn, z_GxL, log_volume):
  """log p(x) = log sum_g p(x|z_g) p(z_g) dV over a grid of z (float64 sums)."""
  logits = np.asarray(
    vae.apply({"params": params}, jnp.asarray(z_GxL), method="decode"), np.float64
  )
  logits = logits.reshape(len(z_GxL), -1)
  x = x_NxD.reshape(len(x_NxD), -1)
  log_px_NxG = (
    x[:, None] * -np.logaddexp(0, -logits) + (1 - x[:, None]) * -np.logaddexp(0, logits)
  ).sum(-1)
  return special.logsumexp(log_px_NxG + log_prior_fn(z_GxL)[None], axis=1) + log_volume


@pytest.mark.parametrize(
  "prior,posterior,settings",
  [
    ("mog", "gaussian", {}),
    ("vamp", "gaussian", {}),
    ("normal", "planar", {"length": 2}),
    ("normal", "iaf", {"length": 2, "hidden_dim": 8}),
    ("spherical_uniform", "vmf", {}),
  ],
)
def test_importance_sampled_likelihood_matches_a_grid_integral(prior, posterior, settings):
  mixture = {"num_components": 3} if prior in ("mog", "vamp") else None
  vae, params = _build(prior, posterior, prior_settings=mixture, **settings)
  if posterior in ("planar", "iaf"):  # A base wider than the posterior: a proposal for K draws.
    encoder = params["encoder"]
    wide = {**encoder["logvar"], "bias": encoder["logvar"]["bias"] + 2.0}
    params = {**params, "encoder": {**encoder, "logvar": wide}}
  x = _binary(3, seed=1)
  if posterior == "vmf":  # z on the circle: the integral over the angle.
    theta = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    grid, log_volume = np.stack([np.cos(theta), np.sin(theta)], 1), np.log(2 * np.pi / 4000)
    log_prior_fn = lambda z: np.full(len(z), -np.log(2 * np.pi))
  else:
    axis = np.linspace(-8, 8, 321)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    log_volume = 2 * np.log(axis[1] - axis[0])
    if prior == "mog":
      means, logvars = (np.asarray(params["prior"][k], np.float64) for k in ("means", "logvars"))
    elif prior == "vamp":
      u = jnp.clip(params["prior"]["pseudo_inputs"], 0, 1)
      means, logvars = (
        np.asarray(a, np.float64) for a in vae.apply({"params": params}, u, method="encode")
      )
    else:
      means, logvars = np.zeros((1, 2)), np.zeros((1, 2))
    log_prior_fn = lambda z: _mixture_log_pdf(z, means, logvars)
  exact = _grid_log_likelihood(vae, params, x, log_prior_fn, grid, log_volume)
  draws = 16000 if posterior in ("planar", "iaf") else 4000  # A flow's weights vary more.
  estimate = evaluate.iwae_log_likelihood(params, vae.apply, x, jax.random.key(10), draws)
  np.testing.assert_allclose(estimate["iwae"], exact, atol=0.02)
  assert (estimate["elbo"] <= estimate["iwae"] + 1e-6).all()
  # The KL's estimate is E_q[log q - log p]: the ELBO's gap to the reconstruction term.
  assert np.isfinite(estimate["kl"]).all()


def test_a_hierarchy_trains_with_the_elbo_as_the_one_sample_vae_k():
  x, key = jnp.asarray(_binary(4).reshape(4, PIXELS, 1, 1)), jax.random.key(11)
  overrides = {"model.name": "hvae2", "model.latent_dim": 2, "model.latent_dim_1": 3}
  state, _, elbo_fn, elbo_hp = make_model(overrides, image_shape=(PIXELS, 1, 1))
  _, _, vae_k_fn, vae_k_hp = make_model(
    {**overrides, "objective.name": "vae_k"}, image_shape=(PIXELS, 1, 1)
  )
  elbo_loss, metrics = elbo_fn(state.params, state.apply_fn, x, key, elbo_hp)
  np.testing.assert_allclose(
    elbo_loss, vae_k_fn(state.params, state.apply_fn, x, key, vae_k_hp)[0], rtol=1e-6
  )
  np.testing.assert_allclose(metrics["bce"] + metrics["kl"], elbo_loss, rtol=1e-5)


RUNS = {  # Between them every prior and posterior family, on a small mlp.
  "vamp_iaf": (
    "--config.prior.name=vamp",
    "--config.prior.num_components=5",
    "--config.posterior.name=iaf",
  ),
  "mog_planar": (
    "--config.prior.name=mog",
    "--config.posterior.name=planar",
    "--config.posterior.length=2",
  ),
  "sphere_vmf": ("--config.prior.name=spherical_uniform", "--config.posterior.name=vmf"),
  # The estimators' issue: the Hamiltonian VAE (its sampler's parameters) under PIWAE.
  "hamiltonian_piwae": (
    "--config.model.name=hamiltonian",
    "--config.model.leapfrog_steps=1",
    "--config.objective.name=piwae",
    "--config.objective.num_groups=2",
    "--config.objective.num_samples=2",
  ),
}
SMALL = (
  "--config.model.hidden_dim=32",
  "--config.model.latent_dim=4",
  "--config.run.tensorboard=False",
)


@pytest.mark.parametrize("name", RUNS)
def test_each_latent_model_resumes_bit_identical_and_reopens_in_a_fresh_process(
  name, session_idx_dir, tmp_path
):
  args = (*SMALL, *RUNS[name])
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  # Stopped after epoch 1 in this process (tests/test_kill.py SIGKILLs the same machinery
  # anywhere); resumed by the same command.
  stopped = cli(*train_args(killed, session_idx_dir, *args), "--config.optim.num_epochs=1")
  assert stopped.returncode == 0, stopped.stderr
  resumed = cli(*train_args(killed, session_idx_dir, *args))
  assert resumed.returncode == 0 and "Resuming from" in resumed.stdout, resumed.stderr
  if name in ("vamp_iaf", "sphere_vmf"):  # (mog_planar's parameters: as vamp_iaf's)
    assert cli(*train_args(whole, session_idx_dir, *args)).returncode == 0
    assert metrics(killed) == metrics(whole)
    assert_trees_equal_bitwise(saved_arrays(killed), saved_arrays(whole))
  codes_path = tmp_path / "codes.npz"
  results = run_cli_fresh(
    ["evaluate", f"--workdir={killed}"],
    ["sample", f"--workdir={killed}", "--num=4", f"--out={tmp_path / 's.png'}"],
    ["likelihood", f"--workdir={killed}", "--num_samples=20", "--num=10"],
    ["encode", f"--workdir={killed}", f"--out={codes_path}"],
  )
  for result in results:
    assert result.returncode == 0, result.stderr
  evaluated = json.loads(results[0].stdout.splitlines()[-1])
  assert evaluated["loss"] == pytest.approx(evaluated["recorded_test_loss"], rel=1e-6)
  assert evaluated["kl_per_dim"] is None  # No per-unit Gaussian KL for these latents.
  codes = np.load(codes_path)  # The posterior's codes, not a base Gaussian's mean.
  if name == "hamiltonian_piwae":  # Its encoder is the Gaussian q0: encode exports it.
    assert sorted(codes.files) == ["labels", "logvar", "mu"]
    return
  assert sorted(codes.files) == ["code", "labels"] and codes["code"].shape[1] == 4
  if name == "sphere_vmf":
    np.testing.assert_allclose(np.linalg.norm(codes["code"], axis=1), 1.0, rtol=1e-5)


def test_the_model_of_a_state_is_found_through_a_wrapped_apply_fn():
  vae, params = _build()
  wrapped = functools.partial(functools.partial(vae.apply), mutable=False)
  state = step.TrainState.create(apply_fn=wrapped, params=params, tx=optax.sgd(0.1))
  assert step.model_of(state) is vae


def test_an_objective_that_does_not_declare_its_latents_is_refused_for_other_latents():
  from flax import struct

  from vae_jax import config as config_lib

  @struct.dataclass
  class Plain(objectives.Hparams):
    pass

  try:
    # Written on __call__'s (mu, logvar) as most objectives are: undeclared, so Gaussian only.
    objectives.register_objective("plain_kl", Plain)(lambda p, a, x, k, h: (0.0, {"loss": 0.0}))
    config_lib.parse(config_lib.from_flat({"objective.name": "plain_kl"}))  # The default: fine.
    for latents in ({"posterior.name": "planar"}, {"prior.name": "mog"}):
      with pytest.raises(ConfigError, match="config.objective.name='plain_kl': reads the encoder"):
        config_lib.parse(config_lib.from_flat({"objective.name": "plain_kl", **latents}))
  finally:
    objectives.REGISTRY.entries.pop("plain_kl", None)


def test_runs_of_any_prior_share_the_elbo_as_test_metric_but_a_hierarchy_keeps_its_own():
  from vae_jax import config as config_lib

  def metric(**flat):
    settings = config_lib.parse(config_lib.from_flat({"objective.name": "iwae", **flat}))
    shared = config_lib.shared_test_metric(settings)
    return objectives.evaluation(settings.objective, shared)[0].name

  assert metric() == metric(**{"prior.name": "vamp"}) == metric(**{"posterior.name": "iaf"})
  assert metric() == "elbo" and metric(**{"model.name": "hvae2"}) == "iwae"


def test_the_mean_z_kl_without_a_closed_form_is_an_estimate_at_a_fixed_draw():
  vae, params = _build("mog", prior_settings={"num_components": 3})
  x = jnp.asarray(_binary(4))
  logits, kl, _ = vae.apply({"params": params}, x, None, method="elbo_terms")
  code = vae.apply({"params": params}, x, method="posterior_point")
  np.testing.assert_allclose(logits, vae.apply({"params": params}, code, method="decode"))
  _, log_p, log_q = vae.apply(
    {"params": params}, x, jax.random.key(0), 1, method="importance_terms"
  )
  np.testing.assert_allclose(kl, (log_q - log_p)[0], rtol=1e-6)
