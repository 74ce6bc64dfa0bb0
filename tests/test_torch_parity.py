"""Exact equivalence with the PyTorch reference: same weights, batch and noise, same numbers.

Needs the torch extra (CI installs torch 2.13.0 CPU); skipped where torch is absent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import convert, losses, objectives, step
from vae_jax.models import mlp

torch = pytest.importorskip("torch")
from experiments import pytorch_reference  # noqa: E402

REFERENCE = mlp.MLP(image_shape=(784,))  # The reference network on flat 784-pixel inputs.

B = 32


@pytest.fixture()
def setup():
  torch.manual_seed(0)
  torch_model = pytorch_reference.VAE()
  params = jax.tree.map(
    jnp.asarray,
    convert.flax_from_torch({k: v.detach().numpy() for k, v in torch_model.state_dict().items()}),
  )
  rs = np.random.RandomState(0)
  x = (rs.randint(0, 256, (B, 784)) / 255).astype(np.float32)  # Pixels / 255, as both feed.
  eps = np.asarray(jax.random.normal(jax.random.key(3), (B, 20)))  # What the JAX model draws.
  return torch_model, params, x, eps


def _jax_loss(params, x, key):
  logits, mu, logvar = REFERENCE.apply({"params": params}, x, key)
  loss, bce, kl = losses.vae_loss(logits, x, mu, logvar)
  return loss, (jax.nn.sigmoid(logits), mu, logvar, bce, kl)


def _torch_loss(model, x, eps):
  x_t = torch.from_numpy(x)
  recon, mu, logvar = model(x_t, torch.tensor(eps))
  loss, bce, kl = pytorch_reference.loss_terms(recon, x_t, mu, logvar)
  return loss, (recon, mu, logvar, bce, kl)


def test_conversion_round_trips_and_names_layers(setup):
  torch_model, params, _, _ = setup
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  back = convert.torch_from_flax(params)
  assert set(back) == set(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k])
  assert params["decoder"]["logits"]["kernel"].shape == (400, 784)  # fc4.weight is (784, 400)
  with pytest.raises(KeyError, match="expected"):
    convert.flax_from_torch({"fc1.weight": state["fc1.weight"]})


def test_forward_terms_and_loss_agree(setup):
  torch_model, params, x, eps = setup
  loss_j, (recon_j, mu_j, logvar_j, bce_j, kl_j) = _jax_loss(params, x, jax.random.key(3))
  loss_t, (recon_t, mu_t, logvar_t, bce_t, kl_t) = _torch_loss(torch_model, x, eps)
  for j, t in ((mu_j, mu_t), (logvar_j, logvar_t), (recon_j, recon_t)):
    np.testing.assert_allclose(j, t.detach().numpy(), rtol=1e-5, atol=1e-6)
  for j, t in ((bce_j, bce_t), (kl_j, kl_t), (loss_j, loss_t)):
    np.testing.assert_allclose(float(j), t.item(), rtol=1e-5)


def test_all_parameter_gradients_agree(setup):
  torch_model, params, x, eps = setup
  grads_j = jax.grad(lambda p: _jax_loss(p, x, jax.random.key(3))[0])(params)
  loss_t, _ = _torch_loss(torch_model, x, eps)
  loss_t.backward()
  grads_t = convert.flax_from_torch({k: p.grad.numpy() for k, p in torch_model.named_parameters()})
  # The same gradients in float64 (torch, double) show what float32 rounding alone does:
  # entries are summed over the batch and reach ~16 here, so both float32 implementations
  # sit ~1e-6 from the float64 value. atol is therefore 1e-6 per unit of the tensor's
  # largest gradient (rtol 1e-4 as stated).
  model64 = pytorch_reference.VAE().double()
  model64.load_state_dict({k: v.double() for k, v in torch_model.state_dict().items()})
  x64 = torch.from_numpy(x).double()
  recon, mu, logvar = model64(x64, torch.from_numpy(eps).double())
  pytorch_reference.loss_terms(recon, x64, mu, logvar)[0].backward()
  grads_64 = convert.flax_from_torch({k: p.grad.numpy() for k, p in model64.named_parameters()})

  def close(a, b, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(ref).max()))

  jax.tree.map(close, grads_j, grads_t, grads_64)
  jax.tree.map(close, grads_j, grads_64, grads_64)
  jax.tree.map(close, grads_t, grads_64, grads_64)


def test_one_adam_step_leaves_the_same_parameters(setup):
  torch_model, params, x, eps = setup
  opt_t = torch.optim.Adam(torch_model.parameters(), lr=1e-3)
  opt_t.zero_grad()
  _torch_loss(torch_model, x, eps)[0].backward()
  grads_t = convert.flax_from_torch({k: p.grad.numpy() for k, p in torch_model.named_parameters()})
  opt_t.step()
  after_t = convert.flax_from_torch(
    {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  )
  tx = optax.adam(1e-3)
  step = lambda grads: optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  # The optimizers alone, fed the same gradients: the same parameters.
  jax.tree.map(
    lambda j, t: np.testing.assert_allclose(j, t, rtol=1e-5, atol=1e-8), step(grads_t), after_t
  )
  # End to end, each with its own gradients. Step 1 of Adam moves a weight by
  # lr * g / (|g| + 1e-8): about 1e-3 when |g| >> 1e-8, but a weight whose gradient is
  # within float32 rounding of 0 can move by any amount up to 1e-3 in either. atol 5e-6
  # (0.5 % of a step) covers those few; every other weight agrees to rtol 1e-5.
  grads_j = jax.grad(lambda p: _jax_loss(p, x, jax.random.key(3))[0])(params)
  jax.tree.map(
    lambda j, t: np.testing.assert_allclose(j, t, rtol=1e-5, atol=5e-6), step(grads_j), after_t
  )


def test_train_step_draws_the_noise_the_reference_is_given(setup):
  """step.train_step's loss equals the torch loss fed eps = normal(fold_in(key, step))."""
  torch_model, params, x, _ = setup
  state = step.TrainState.create(apply_fn=REFERENCE.apply, params=params, tx=optax.adam(1e-3))
  rng_noise = jax.random.key(11)
  x_u8 = np.round(x * 255).astype(np.uint8)
  elbo = objectives.REGISTRY.get("elbo")
  _, metrics = step.train_step(
    state,
    jnp.asarray(x_u8),
    rng_noise,
    objectives.make_hparams((elbo, dict(elbo.settings))),
    objective_fn=elbo.target.fn,
  )
  eps = np.asarray(jax.random.normal(jax.random.fold_in(rng_noise, 0), (B, 20)))
  loss_t, _ = _torch_loss(torch_model, x_u8.astype(np.float32) / 255, eps)
  np.testing.assert_allclose(float(metrics["loss"]), loss_t.item(), rtol=1e-5)


@pytest.mark.parametrize("layer,fan_in", [("fc1", 784), ("fc21", 400), ("fc3", 20), ("fc4", 400)])
def test_torch_init_option_draws_from_nn_linear_distribution(layer, fan_in):
  """Bounds and first two moments of models' 'torch' init against nn.Linear's, per layer."""
  bound = 1 / np.sqrt(fan_in)
  fan_out = {"fc1": 400, "fc21": 20, "fc3": 400, "fc4": 784}[layer]
  draws = 200_000 // (fan_in * fan_out) + 1  # At least 200k weights per side.
  kernel_init, bias_init = mlp.torch_linear_init(fan_in)
  ours = np.concatenate(
    [np.ravel(kernel_init(jax.random.key(i), (fan_in, fan_out))) for i in range(draws)]
  )
  torch.manual_seed(0)
  theirs = np.concatenate(
    [torch.nn.Linear(fan_in, fan_out).weight.detach().numpy().ravel() for _ in range(draws)]
  )
  for w in (ours, theirs):
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    n = w.size
    assert abs(w.mean()) < 5 * bound / np.sqrt(3 * n)  # 5 standard errors
    assert abs(w.var() - bound**2 / 3) < 5 * bound**2 * np.sqrt(4 / 45 / n)
  ours_b = np.ravel(bias_init(jax.random.key(0), (50_000,)))
  assert np.abs(ours_b).max() <= bound and abs(ours_b.var() - bound**2 / 3) < 0.02 * bound**2 / 3
