"""Anomaly scores and baselines against independent small computations (numpy, zlib, sklearn)."""

import itertools
import zlib

import jax
import numpy as np
import pytest
from conftest import make_model

from vae_jax import anomaly, api, objectives


def test_roc_auc_score_is_the_fraction_of_anomaly_normal_pairs_ranked_right():
  """The AUROC the experiment reports (sklearn) = P(score_anomaly > score_normal) + 1/2 P(tie),
  counted over every pair by hand."""
  from sklearn.metrics import roc_auc_score

  rs = np.random.RandomState(0)
  anomalous = rs.rand(40) < 0.3
  scores = rs.randint(0, 6, 40).astype(float)  # Many ties.
  pairs = list(itertools.product(scores[anomalous], scores[~anomalous]))
  by_hand = sum(1.0 if a > n else 0.5 if a == n else 0.0 for a, n in pairs) / len(pairs)
  assert roc_auc_score(anomalous, scores) == pytest.approx(by_hand, abs=1e-12)


def test_mahalanobis_distance_matches_the_inverse_covariance_written_out():
  rs = np.random.RandomState(1)
  reference = rs.randn(200, 3) @ np.array([[2.0, 0, 0], [0.5, 1.0, 0], [0, 0.3, 0.2]]) + 4.0
  z = rs.randn(7, 3)
  mean = reference.sum(0) / len(reference)
  cov = (reference - mean).T @ (reference - mean) / (len(reference) - 1)
  inv = np.linalg.inv(cov)
  expected = [np.sqrt((v - mean) @ inv @ (v - mean)) for v in z]
  np.testing.assert_allclose(
    anomaly.mahalanobis_distance(reference, z, ridge=0.0), expected, rtol=1e-9
  )


def test_compressed_bits_are_zlibs_length_of_the_8_bit_image():
  rs = np.random.RandomState(2)
  x_u8 = rs.randint(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  x_u8[1] = 0  # A blank image compresses to a few bytes.
  bits = anomaly.compressed_bits(x_u8 / 255.0)
  assert list(bits) == [8 * len(zlib.compress(img.tobytes(), 9)) for img in x_u8]
  assert bits[1] < bits[0] / 20


def scoring_with(x, **cache):
  """A Scoring whose shared quantities are given: each score's formula alone."""
  return anomaly.Scoring(state=None, x_NxHxWxC=x, x_train_NxHxWxC=x, cache=cache)


def test_likelihood_scores_follow_their_formulas():
  rs = np.random.RandomState(3)
  x = rs.randint(0, 256, (4, 28, 28, 1)) / 255.0
  log_px, elbo, log_px_bg = rs.randn(4) * 50 - 300, rs.randn(4) * 50 - 320, rs.randn(4) * 50 - 280
  scoring = scoring_with(
    x,
    estimates={"iwae": log_px, "elbo": elbo},
    background_estimates={"iwae": log_px_bg, "elbo": log_px_bg},
  )
  np.testing.assert_allclose(anomaly.SCORES["neg_elbo"](scoring), -elbo)
  np.testing.assert_allclose(anomaly.SCORES["neg_log_px"](scoring), -log_px)
  np.testing.assert_allclose(anomaly.SCORES["likelihood_ratio"](scoring), -(log_px - log_px_bg))
  # Serra et al.: bits of the 8-bit image under the model, minus its compressed bits.
  x_u8 = np.round(x * 255).astype(np.uint8).reshape(4, -1)
  zlib_bits = np.array([8 * len(zlib.compress(r.tobytes(), 9)) for r in x_u8])
  expected = -log_px / np.log(2) + 784 * 8 - zlib_bits
  np.testing.assert_allclose(anomaly.SCORES["complexity_corrected"](scoring), expected)


def test_reconstruction_scores_are_bce_and_squared_error_at_the_mean():
  rs = np.random.RandomState(4)
  x = rs.rand(5, 4, 4, 1)
  recon = rs.rand(5, 16)
  scoring = scoring_with(x, reconstruction=recon)
  x_flat = x.reshape(5, -1)
  np.testing.assert_allclose(anomaly.SCORES["mse_at_mean"](scoring), ((x_flat - recon) ** 2).sum(1))
  bce = [
    -sum(xi * np.log(p) + (1 - xi) * np.log(1 - p) for xi, p in zip(row, prow))
    for row, prow in zip(x_flat, recon)
  ]
  np.testing.assert_allclose(anomaly.SCORES["bce_at_mean"](scoring), bce, rtol=1e-9)


def test_scores_of_a_model_agree_with_its_own_loss_and_bound():
  """On a (fresh) reference model: BCE at z = mu is the elbo objective's reconstruction term at
  key=None, and -log p(x) (logmeanexp of the weights) never exceeds -ELBO (their mean)."""
  state, _, objective_fn, hparams = make_model()
  rs = np.random.RandomState(5)
  x = (rs.rand(4, 28, 28, 1) < 0.3).astype(np.float32)
  scoring = anomaly.Scoring(state, x, x, objectives.Likelihood(), jax.random.key(0), num_samples=3)
  scores = {
    name: anomaly.timed_score(scoring, name)
    for name in anomaly.SCORES
    if name != "likelihood_ratio"
  }
  _, metrics = objective_fn(state.params, state.apply_fn, x, None, hparams)
  assert scores["bce_at_mean"][0].sum() == pytest.approx(float(metrics["bce"]), rel=1e-4)
  assert np.all(scores["neg_log_px"][0] <= scores["neg_elbo"][0] + 1e-4)
  mu = api.encode(state, x)[0]
  np.testing.assert_allclose(scores["mahalanobis"][0], anomaly.mahalanobis_distance(mu, mu))
  # Each score is charged the shared estimates it read, whichever score computed them.
  assert scores["neg_log_px"][1] >= scoring.cache_seconds["estimates"]
  assert scores["neg_elbo"][1] >= scoring.cache_seconds["estimates"]
  with pytest.raises(ValueError, match="background model"):
    anomaly.SCORES["likelihood_ratio"](scoring)


def test_a_registered_score_is_computed_by_name():
  @anomaly.register_score("mean_brightness")
  def mean_brightness(scoring):
    return anomaly.flat(scoring.x_NxHxWxC).mean(1)

  try:
    x = np.linspace(0, 1, 3 * 16).reshape(3, 4, 4, 1)
    score, seconds = anomaly.timed_score(scoring_with(x), "mean_brightness")
    np.testing.assert_allclose(score, x.reshape(3, -1).mean(1))
    assert seconds >= 0
  finally:
    del anomaly.SCORES["mean_brightness"]


def test_perturb_replaces_about_rate_of_the_pixels_and_keeps_the_rest():
  x_u8 = np.full((20, 28, 28, 1), 7, np.uint8)
  out = anomaly.perturb(x_u8, jax.random.key(0), 0.2)
  changed = out != 7
  assert out.dtype == np.uint8 and out.shape == x_u8.shape
  # A replaced pixel keeps 7 with probability 1/256.
  assert changed.mean() == pytest.approx(0.2 * 255 / 256, abs=0.015)
  np.testing.assert_array_equal(out, anomaly.perturb(x_u8, jax.random.key(0), 0.2))


def test_kde_baseline_is_sklearns_gaussian_kernel_density():
  from sklearn.neighbors import KernelDensity

  from experiments.anomaly_baselines import gaussian_kde_nll

  rs = np.random.RandomState(6)
  train, test = rs.randn(300, 4), rs.randn(50, 4) * 1.5
  expected = -KernelDensity(kernel="gaussian", bandwidth=0.7).fit(train).score_samples(test)
  np.testing.assert_allclose(gaussian_kde_nll(train, test, 0.7, chunk=16), expected, rtol=1e-8)


def test_pca_error_is_the_residual_of_the_top_principal_directions():
  from experiments import anomaly_baselines

  rs = np.random.RandomState(7)
  train = rs.randn(200, 30) @ rs.randn(30, 30)
  test = rs.randn(20, 30)
  mean = train.mean(0)
  _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
  basis = vt[: anomaly_baselines.PCA_ERROR_COMPONENTS]
  residual = (test - mean) - (test - mean) @ basis.T @ basis
  np.testing.assert_allclose(
    anomaly_baselines.pca_error(train, test), (residual**2).sum(1), rtol=1e-8
  )


def test_every_baseline_ranks_far_points_above_the_training_cloud():
  from sklearn.metrics import roc_auc_score

  from experiments import anomaly_baselines

  rs = np.random.RandomState(8)
  basis = rs.randn(5, 60)
  train = rs.randn(400, 5) @ basis * 0.1 + 0.5
  normal = rs.randn(40, 5) @ basis * 0.1 + 0.5
  far = rs.rand(40, 60)  # Off the training data's 5-dimensional plane.
  test, labels = np.concatenate([normal, far]), np.r_[np.zeros(40), np.ones(40)]
  for name, fn in anomaly_baselines.BASELINES.items():
    assert roc_auc_score(labels, fn(train, test)) > 0.95, name


def test_ocsvm_gamma_scale_is_one_over_dimension_times_variance():
  """The stated hyper-parameter: gamma='scale' is 1 / (D var(X)) over all pixels."""
  from sklearn.svm import OneClassSVM

  from experiments import anomaly_baselines

  rs = np.random.RandomState(9)
  train, test = rs.rand(150, 20), rs.rand(30, 20)
  explicit = OneClassSVM(kernel="rbf", gamma=1 / (20 * train.var()), nu=0.1).fit(train)
  np.testing.assert_allclose(
    anomaly_baselines.ocsvm_raw(train, test), -explicit.decision_function(test), rtol=1e-6
  )


def test_summary_means_over_classes_and_sd_over_seeds():
  from experiments.anomaly import summarize

  per_class = {
    0: {"auroc": {"s": [0.9, 0.8, 0.7]}, "seconds": {"s": [1, 1, 1]}},
    1: {"auroc": {"s": [0.5, 0.6, 0.4]}, "seconds": {"s": [3, 3, 3]}},
  }
  out = summarize(per_class)["s"]
  np.testing.assert_allclose(out["class_mean"], [0.8, 0.5])
  np.testing.assert_allclose(out["class_sd"], [0.1, 0.1])
  seed_means = np.array([0.7, 0.7, 0.55])
  assert out["mean"] == pytest.approx(seed_means.mean())
  assert out["sd"] == pytest.approx(seed_means.std(ddof=1))
  assert out["seconds"] == 2
