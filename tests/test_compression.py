"""Bits-back compression: the latent buckets against scipy, every symbol coded and decoded,
the rate against the exact expected code length, round trips of random models and images,
the discrete likelihood, and every bad file or output refused in one line."""

import itertools
import json
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from conftest import synthetic_split, tree_bytes, write_idx_dir
from hypothesis import given, settings, strategies as st
from scipy import stats

import vae_jax
from vae_jax import __main__ as cli, bitsback, compression, data, images, losses


def test_latent_buckets_have_equal_prior_mass_and_masses_sum_to_one():
  for precision in (4, 8):
    edges = np.asarray(bitsback.bucket_edges(precision), np.float64)
    want = stats.norm.ppf(np.arange((1 << precision) + 1) / (1 << precision))
    np.testing.assert_allclose(edges[1:-1], want[1:-1], rtol=1e-5, atol=1e-5)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    prior = np.asarray(bitsback.bucket_masses(jnp.zeros((1, 1)), jnp.zeros((1, 1)), precision))
    np.testing.assert_allclose(prior, 1 / (1 << precision), rtol=1e-4)
    mu, logvar = jnp.array([[-6.0, 0.3, 5.0]]), jnp.array([[-9.0, 0.5, -2.0]])
    q = np.asarray(bitsback.bucket_masses(mu, logvar, precision), np.float64)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
    sigma = np.exp(0.5 * np.asarray(logvar))[..., None]
    want_q = stats.norm.cdf(want[1:], np.asarray(mu)[..., None], sigma) - stats.norm.cdf(
      want[:-1], np.asarray(mu)[..., None], sigma
    )
    np.testing.assert_allclose(q, want_q, atol=2e-6)


def test_the_discretized_logistic_sums_to_one_and_is_the_bernoulli_at_two_levels():
  rng = np.random.default_rng(0)
  mean_logit, log_scale = (
    rng.normal(0, 3, 50).astype(np.float32),
    rng.normal(-3, 2, 50).astype(np.float32),
  )
  log_p = np.asarray(
    losses.discretized_logistic_log_probs(jnp.asarray(mean_logit), jnp.asarray(log_scale)),
    np.float64,
  )
  np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, rtol=1e-5)
  k = rng.integers(0, 256, 50)
  nll = losses.discretized_logistic_nll(
    jnp.asarray(mean_logit), jnp.asarray(log_scale), jnp.asarray(k / 255, jnp.float32)
  )
  np.testing.assert_allclose(nll, -log_p[np.arange(50), k], rtol=1e-4, atol=1e-4)
  # The coder's tables: the same masses from the CDF at the edges; and the three-way split.
  table = np.asarray(
    losses.discretized_logistic_probs(jnp.asarray(mean_logit), jnp.asarray(log_scale)), np.float64
  )
  np.testing.assert_allclose(table, np.exp(log_p), atol=3e-7)
  ends = np.stack(
    losses.discretized_logistic_probs(jnp.asarray(mean_logit), jnp.asarray(log_scale), ends=True),
    -1,
  ).astype(np.float64)
  np.testing.assert_allclose(
    ends, np.stack([table[:, 0], table[:, -1], table[:, 1:-1].sum(-1)], -1), atol=1e-6
  )
  # Two levels: P(1) = sigmoid((mean - 1/2) / scale), the Bernoulli of that logit.
  log_two = np.asarray(
    losses.discretized_logistic_log_probs(jnp.asarray(mean_logit), jnp.asarray(log_scale), 2),
    np.float64,
  )
  logit = (mean_logit.astype(np.float64) - 0.5) / np.exp(
    np.maximum(log_scale, losses.MIN_LOG_SCALE)
  )
  np.testing.assert_allclose(log_two[:, 1], -np.logaddexp(0, -logit), rtol=1e-4, atol=1e-5)
  bits = (k > 127).astype(np.float32)
  bce = losses.bce_per_example(jnp.asarray(logit[None], jnp.float32), jnp.asarray(bits[None]))
  np.testing.assert_allclose(bce, -log_two[np.arange(50), (k > 127).astype(int)].sum(), rtol=1e-4)


def test_the_beta_binomial_is_scipys_sums_to_one_and_is_the_bernoulli_at_one_trial():
  rng = np.random.default_rng(1)
  log_alpha, log_beta = (
    rng.normal(0, 2, 40).astype(np.float32),
    rng.normal(0, 2, 40).astype(np.float32),
  )
  alpha, beta = np.exp(log_alpha.astype(np.float64)), np.exp(log_beta.astype(np.float64))
  want = stats.betabinom.logpmf(np.arange(256)[None], 255, alpha[:, None], beta[:, None])
  log_p = np.asarray(
    losses.beta_binomial_log_probs(jnp.asarray(log_alpha), jnp.asarray(log_beta)), np.float64
  )
  np.testing.assert_allclose(log_p, want, atol=2e-3)
  np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, atol=1e-3)
  k = rng.integers(0, 256, 40)
  nll = losses.beta_binomial_nll(
    jnp.asarray(log_alpha), jnp.asarray(log_beta), jnp.asarray(k / 255, jnp.float32)
  )
  np.testing.assert_allclose(nll, -want[np.arange(40), k], atol=2e-3)
  ends = np.stack(
    losses.beta_binomial_probs(jnp.asarray(log_alpha), jnp.asarray(log_beta), ends=True), -1
  ).astype(np.float64)
  p = np.exp(want)
  np.testing.assert_allclose(ends, np.stack([p[:, 0], p[:, -1], p[:, 1:-1].sum(-1)], -1), atol=5e-4)
  one = np.exp(
    np.asarray(
      losses.beta_binomial_log_probs(jnp.asarray(log_alpha), jnp.asarray(log_beta), 2), np.float64
    )
  )
  np.testing.assert_allclose(one[:, 1], alpha / (alpha + beta), rtol=1e-4)  # Bernoulli(mean).


def test_the_beta_binomial_stays_finite_where_the_decoder_drives_alpha_to_zero():
  # exp(-100) is 0 in float32 and lgamma(0) is inf: the log parameters are clipped to +-10,
  # where the loss, its gradient and the coder's tables are finite and a level keeps mass.
  log_alpha, log_beta = jnp.asarray([-100.0, 100.0, -10.0]), jnp.asarray([3.0, -100.0, 0.0])
  x = jnp.asarray([0.0, 1.0, 0.0])
  nll, grads = jax.value_and_grad(lambda a: losses.beta_binomial_nll(a, log_beta, x).sum())(
    log_alpha
  )
  assert np.isfinite(nll) and np.isfinite(np.asarray(grads)).all()
  clipped = np.clip(np.asarray(log_alpha, np.float64), -10, 10)
  want = -stats.betabinom.logpmf(
    [0, 255, 0], 255, np.exp(clipped), np.exp(np.clip([3.0, -100.0, 0.0], -10, 10))
  )
  np.testing.assert_allclose(losses.beta_binomial_nll(log_alpha, log_beta, x), want, atol=1e-4)
  table = np.asarray(losses.beta_binomial_probs(log_alpha, log_beta))
  assert np.isfinite(table).all() and (table > 0).any(-1).all()
  # The ratio recurrence from level 0 loses ~3e-3 of the mass over 255 steps at the clip.
  np.testing.assert_allclose(table.sum(-1), 1.0, atol=5e-3)


@pytest.mark.parametrize("likelihood", ["beta_binomial", "discretized_logistic"])
def test_a_level_the_model_rules_out_still_codes_and_decodes(likelihood):
  # Pixels the model is all but sure are 0 or 255 (their levels between underflow to 0 in
  # float32), yet are not: the tables stay usable and the levels come back.
  import constriction

  params_Mx2 = np.array(
    [[-10, 10], [10, -10], [-30, -30], [3, -9], [0.5, -7], [0, 0], [3.382978, 2.3214228]],
    np.float32,
  )
  if likelihood == "discretized_logistic":
    params_Mx2[:, 0] = np.array([-3, 4, 0.5, 0.0, 1.0, 0.5, 0.2])  # Locations outside [0, 1].
  table_Mx254 = bitsback.padded_call(bitsback._between, params_Mx2, likelihood=likelihood)
  assert np.isfinite(table_Mx254).all() and (table_Mx254.sum(-1) > 0).all()
  levels = np.array([127, 0, 253, 200, 5, 60, 253], np.int32)  # The last: a Fashion pixel.
  model = constriction.stream.model.Categorical(perfect=False)
  coder = constriction.stream.stack.AnsCoder()
  coder.encode_reverse(levels, model, table_Mx254)
  np.testing.assert_array_equal(coder.decode(model, table_Mx254), levels)


def _tiny(seed: int, likelihood: str = "bernoulli", latent: int = 2, shape=(4, 4, 1)):
  """A random tiny model (its init) as a train state: (state, model)."""
  config = vae_jax.get_config()
  config.model.update(hidden_dim=8, latent_dim=latent)
  config.objective.likelihood = likelihood
  config.seed = seed
  state, _ = vae_jax.create_state(config, shape, num_train_examples=16)
  return state


def test_every_latent_bucket_and_pixel_level_codes_and_decodes_at_the_edges():
  codec = bitsback.Codec(*(lambda s: (s.params, s.apply_fn))(_tiny(0)), "bernoulli", 2, precision=4)
  # A posterior far in either tail: its symbols are the first and last buckets.
  import constriction

  for mu in (-8.0, 8.0, 0.0):
    q = np.asarray(
      bitsback.bucket_masses(jnp.full((1, 2), mu), jnp.full((1, 2), -8.0), 4), np.float64
    )[0]
    for symbol in (0, 15, int(np.argmax(q[0]))):
      coder = constriction.stream.stack.AnsCoder(bitsback.initial_words())
      coder.encode_reverse(
        np.array([symbol, symbol], np.int32),
        constriction.stream.model.Categorical(perfect=False),
        q,
      )
      assert coder.decode(constriction.stream.model.Categorical(perfect=False), q).tolist() == [
        symbol,
        symbol,
      ]
  images_u8 = np.zeros((3, 4, 4, 1), np.int32)
  images_u8[1] = 1
  words, sizes = codec.encode(images_u8)
  np.testing.assert_array_equal(codec.decode(words, sizes, (4, 4, 1)), images_u8)


def _expected_bits(state, symbols, precision):
  """E_Q[-log2 p(x|z) - log2 P(z) + log2 Q(z|x)] of each image, by enumerating every bucket of
  its two latents (the exact expected code length), and its variance."""
  q = np.asarray(
    bitsback.bucket_masses(*vae_jax.encode(state, symbols.astype(np.float32)), precision),
    np.float64,
  )
  buckets = np.array(list(itertools.product(range(1 << precision), repeat=2)))
  z = np.asarray(bitsback.bucket_centres(precision))[buckets]
  p1 = np.asarray(
    jax.nn.sigmoid(state.apply_fn({"params": state.params}, jnp.asarray(z), method="decode")),
    np.float64,
  )
  p1 = p1.reshape(len(z), -1)
  out = []
  for i, x in enumerate(symbols.reshape(len(symbols), -1)):
    log_px = np.sum(np.where(x, np.log2(p1), np.log2(1 - p1)), axis=1)
    q_b = q[i, 0][buckets[:, 0]] * q[i, 1][buckets[:, 1]]
    bits = -log_px + 2 * precision + np.log2(q_b)
    mean = np.sum(q_b * bits)
    out.append((mean, np.sum(q_b * (bits - mean) ** 2)))
  return np.array(out)


def test_the_measured_rate_is_the_expected_negative_elbo_of_the_discretized_latents():
  state = _tiny(3)
  rng = np.random.default_rng(0)
  symbols = (rng.random((400, 4, 4, 1)) < 0.3).astype(np.int32)
  precision = 5
  words, _ = bitsback.Codec(state.params, state.apply_fn, "bernoulli", 2, precision).encode(symbols)
  measured = 32 * (len(words) - bitsback.INITIAL_WORDS)
  expected = _expected_bits(state, symbols, precision)
  tolerance = 4 * np.sqrt(expected[:, 1].sum()) + 64  # 4 sd of the sum, and a word's rounding.
  assert abs(measured - expected[:, 0].sum()) < tolerance, (
    measured,
    expected[:, 0].sum(),
    tolerance,
  )
  # At the paper's 8 bits per latent, the expected length is the project's (continuous)
  # negative ELBO, estimated with many samples, within 1 %.
  est = vae_jax.log_likelihood(state, symbols[:50].astype(np.float32), jax.random.key(0), 4000)
  fine = _expected_bits(state, symbols[:50], 8)[:, 0].sum()
  np.testing.assert_allclose(-est["elbo"].sum() / np.log(2), fine, rtol=0.01)


@settings(max_examples=8, deadline=None)
@given(
  seed=st.integers(0, 2**16),
  count=st.integers(1, 40),
  latent=st.integers(1, 3),
  likelihood=st.sampled_from(["bernoulli", "discretized_logistic", "beta_binomial"]),
)
def test_random_models_and_images_round_trip_bit_for_bit(seed, count, latent, likelihood):
  state = _tiny(seed, likelihood, latent, (3, 5, 1))
  rng = np.random.default_rng(seed)
  if likelihood == "bernoulli":
    x_u8 = (rng.random((count, 3, 5, 1)) < rng.random()).astype(np.uint8) * 255
  else:
    x_u8 = rng.integers(0, 256, (count, 3, 5, 1)).astype(np.uint8)
  blob = compression.compress_images(state, x_u8, likelihood)
  back, names = compression.decompress_bytes(state, blob)
  np.testing.assert_array_equal(back, x_u8)
  assert names is None


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
  """A 1-epoch run on 300 binary (0/255) images, and an IDX file of 60 more."""
  root = tmp_path_factory.mktemp("compression")
  x, y = synthetic_split(360, 0)
  x = (x > 140).astype(np.uint8) * 255
  config = vae_jax.get_config()
  config.model.update(hidden_dim=32, latent_dim=4)
  config.optim.update(num_epochs=1, batch_size=100)
  config.run.update(progress=False, save_images=False, tensorboard=False)
  splits = {"train": (x[:300], y[:300]), "test": (x[300:], y[300:])}
  config.data.update(source="idx", dir=str(write_idx_dir(root / "data", splits)))
  vae_jax.train(config, root / "run")
  (root / "images-ubyte").write_bytes(data.idx_bytes(x[300:, ..., 0]))
  return root


def _main(capsys, *argv):
  status = cli.main([str(a) for a in argv])
  return status, capsys.readouterr()


def test_compress_and_decompress_give_idx_files_and_pngs_back_bit_for_bit(
  binary_run, tmp_path, capsys
):
  run, idx = binary_run / "run", binary_run / "images-ubyte"
  status, out = _main(
    capsys, "compress", f"--workdir={run}", f"--input={idx}", f"--out={tmp_path / 'a.vjx'}"
  )
  assert status == 0, out.err
  stats_line = json.loads(out.out)
  assert stats_line["images"] == 60 and stats_line["bytes"] == (tmp_path / "a.vjx").stat().st_size
  for out in ("b-ubyte", "png"):  # An IDX file, then a directory of PNGs.
    args = (f"--workdir={run}", f"--input={tmp_path / 'a.vjx'}", f"--out={tmp_path / out}")
    assert _main(capsys, "decompress", *args)[0] == 0
  assert (tmp_path / "b-ubyte").read_bytes() == idx.read_bytes()
  (tmp_path / "png" / "00.png").rename(tmp_path / "png" / "A.PNG")  # Any case of .png.
  names = sorted(p.name for p in (tmp_path / "png").iterdir())
  assert len(names) == 60 and names[0] == "01.png" and "A.PNG" in names
  assert (
    _main(
      capsys,
      "compress",
      f"--workdir={run}",
      f"--input={tmp_path / 'png'}",
      f"--out={tmp_path / 'c.vjx'}",
    )[0]
    == 0
  )
  assert (
    _main(
      capsys,
      "decompress",
      f"--workdir={run}",
      f"--input={tmp_path / 'c.vjx'}",
      f"--out={tmp_path / 'png2'}",
    )[0]
    == 0
  )
  for name in names:  # The PNGs' names and pixels come back.
    np.testing.assert_array_equal(
      images.read_png(tmp_path / "png2" / name, (28, 28, 1)),
      images.read_png(tmp_path / "png" / name, (28, 28, 1)),
    )
  status, out = _main(
    capsys, "compress", f"--workdir={run}", "--input=test", f"--out={tmp_path / 't.vjx'}"
  )
  assert status == 0 and json.loads(out.out)["images"] == 60


def _corrupt(blob: bytes) -> bytes:
  return blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]


def _reheader(blob: bytes, **changes) -> bytes:
  """The file with header keys changed and a valid CRC (a file coded elsewhere)."""
  (length,) = struct.unpack("<I", blob[8:12])
  header = {**json.loads(blob[12 : 12 + length]), **changes}
  head = json.dumps(header).encode()
  body = blob[:8] + struct.pack("<I", len(head)) + head + blob[12 + length : -4]
  return body + struct.pack("<I", zlib.crc32(body))


BAD_FILES = {
  "truncated": (lambda b: b[: len(b) // 2], "CRC-32 does not match"),
  "a flipped bit": (_corrupt, "CRC-32 does not match"),
  "not one of ours": (lambda b: b"GIF89a" + b[6:], "not a vae_jax compressed file"),
  "empty": (lambda b: b"", "not a vae_jax compressed file"),
  "another model": (lambda b: _reheader(b, model_sha256="0" * 64), "was coded by another model"),
  "another image shape": (
    lambda b: _reheader(b, image_shape=[32, 32, 1]),
    "holds (32, 32, 1) images",
  ),
  "another environment": (
    lambda b: _reheader(b, environment={**compression.environment(), "jax": "0.0.1"}),
    "was coded in another environment (jax '0.0.1'",
  ),
  "a header of the wrong types": (
    lambda b: _reheader(b, batches=[-5, 65], count=60),
    "its header is damaged or of another format version",
  ),
  "a code cut short, its CRC made good": (
    lambda b: (lambda body: body + struct.pack("<I", zlib.crc32(body)))(b[:-12]),
    "the code",
  ),
  "names outside the directory": (
    lambda b: _reheader(b, names=["../x.png"] * 60),
    "its header is damaged or of another format version",
  ),
  "one name twice": (
    lambda b: _reheader(b, names=["a.png"] * 60),
    "its header is damaged or of another format version",
  ),
  "values of another likelihood": (
    lambda b: _reheader(b, likelihood="discretized_logistic"),
    "its header is damaged or of another format version",
  ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_one_line_and_nothing_is_written(case, binary_run, tmp_path, capsys):
  run, idx = binary_run / "run", binary_run / "images-ubyte"
  good = tmp_path / "good.vjx"
  assert _main(capsys, "compress", f"--workdir={run}", f"--input={idx}", f"--out={good}")[0] == 0
  damage, message = BAD_FILES[case]
  (tmp_path / "bad.vjx").write_bytes(damage(good.read_bytes()))
  before = tree_bytes(tmp_path)
  status, out = _main(
    capsys,
    "decompress",
    f"--workdir={run}",
    f"--input={tmp_path / 'bad.vjx'}",
    f"--out={tmp_path / 'back'}",
  )
  lines = out.err.strip().splitlines()
  assert status == 2 and len(lines) == 1 and message in lines[0], lines
  assert tree_bytes(tmp_path) == before and not (tmp_path / "back").exists()


def test_bad_images_and_existing_outputs_are_one_line_and_change_nothing(
  binary_run, tmp_path, capsys
):
  run, idx = binary_run / "run", binary_run / "images-ubyte"
  gray = tmp_path / "gray-ubyte"
  gray.write_bytes(data.idx_bytes(np.full((3, 28, 28), 7, np.uint8)))
  small = tmp_path / "small"
  small.mkdir()
  images.save_png(small / "a.png", np.zeros((20, 20), np.uint8))
  (tmp_path / "taken.vjx").write_bytes(b"mine")
  rgba = tmp_path / "rgba"
  rgba.mkdir()
  PIL.Image.new("RGBA", (28, 28)).save(rgba / "a.png")
  empty = tmp_path / "empty-ubyte"
  empty.write_bytes(data.idx_bytes(np.zeros((0, 28, 28), np.uint8)))
  cases = [
    (["compress", f"--input={gray}", f"--out={tmp_path / 'x.vjx'}"], "has 1 gray levels"),
    (["compress", f"--input={small}", f"--out={tmp_path / 'x.vjx'}"], "20x20 L; expected 28x28"),
    (
      ["compress", f"--input={rgba}", f"--out={tmp_path / 'x.vjx'}"],
      "28x28 RGBA; expected 28x28 L or 1",
    ),
    (["compress", f"--input={empty}", f"--out={tmp_path / 'x.vjx'}"], "images: none to compress"),
    (
      ["compress", f"--input={idx}", f"--out={tmp_path / 'taken.vjx'}"],
      "exists; vae_jax does not replace it",
    ),
    (
      ["compress", f"--input={tmp_path / 'none'}", f"--out={tmp_path / 'x.vjx'}"],
      "no such file or directory",
    ),
    (["compress", f"--out={tmp_path / 'x.vjx'}"], "--input is required"),
    (
      ["decompress", f"--input={tmp_path / 'taken.vjx'}", f"--out={small}"],
      "exists; vae_jax does not write into it",
    ),
  ]
  before = tree_bytes(tmp_path)
  for argv, message in cases:
    status, out = _main(capsys, argv[0], f"--workdir={run}", *argv[1:])
    lines = out.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], (argv, lines)
  assert tree_bytes(tmp_path) == before


def test_a_model_without_a_discrete_likelihood_or_one_gaussian_layer_cannot_compress():
  config = vae_jax.get_config()
  config.objective.likelihood = "gaussian"
  state, _ = vae_jax.create_state(config, (4, 4, 1), num_train_examples=16)
  with pytest.raises(compression.CompressionError, match="needs a discrete one"):
    compression.likelihood_of(state, "gaussian")
  for name in ("cmlp", "hvae2"):
    other, _ = vae_jax.create_state(
      vae_jax.get_config(model=name, objective="iwae" if name == "hvae2" else "elbo"),
      (4, 4, 1),
      num_train_examples=16,
    )
    with pytest.raises(compression.CompressionError, match="one Gaussian latent layer"):
      compression.compress_images(other, np.zeros((2, 4, 4, 1), np.uint8), "bernoulli")
