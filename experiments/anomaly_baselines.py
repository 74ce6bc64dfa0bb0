"""Classical one-class baselines, by name: fn(x_train_NxD, x_test_MxD) -> (M,) scores, higher =
more anomalous. Pixels in [0, 1]; every hyper-parameter fixed here (none tuned on anomalies).

  pca_error     squared error of a 20-component PCA reconstruction
  ocsvm_raw     one-class SVM, RBF kernel, gamma='scale' (1 / (D var(X))), nu = 0.1, raw pixels
  ocsvm_pca     the same SVM on 50 PCA components (fitted on the training images)
  kde_pca       Gaussian KDE on 50 whitened PCA components, bandwidth by Scott's rule
                (n^(-1/(d+4)) in whitened units); score = -log density (gaussian_kde_nll:
                sklearn's KernelDensity computes the same, 20x slower in 50 dimensions)
  iforest       Isolation Forest, 100 trees, 256 samples per tree, random_state 0, raw pixels
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
PCA_ERROR_COMPONENTS = 20
FEATURE_COMPONENTS = 50


def baseline(name: str):
  def decorate(fn):
    BASELINES[name] = fn
    return fn

  return decorate


@baseline("pca_error")
def pca_error(x_train, x_test):
  pca = PCA(PCA_ERROR_COMPONENTS, random_state=0).fit(x_train)
  return np.sum((x_test - pca.inverse_transform(pca.transform(x_test))) ** 2, axis=1)


@baseline("ocsvm_raw")
def ocsvm_raw(x_train, x_test):
  return -OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(x_train).decision_function(x_test)


@baseline("ocsvm_pca")
def ocsvm_pca(x_train, x_test):
  pca = PCA(FEATURE_COMPONENTS, random_state=0).fit(x_train)
  return ocsvm_raw(pca.transform(x_train), pca.transform(x_test))


@baseline("kde_pca")
def kde_pca(x_train, x_test):
  pca = PCA(FEATURE_COMPONENTS, whiten=True, random_state=0).fit(x_train)
  features = pca.transform(x_train)
  bandwidth = len(features) ** (-1 / (features.shape[1] + 4))
  return gaussian_kde_nll(features, pca.transform(x_test), bandwidth)


def gaussian_kde_nll(train_NxD, test_MxD, bandwidth: float, chunk: int = 1000) -> np.ndarray:
  """-log (1/N) sum_n N(test_m; train_n, bandwidth^2 I), per test row (nats)."""
  n, d = train_NxD.shape
  sq_N = np.sum(train_NxD**2, axis=1)
  log_norm = np.log(n) + 0.5 * d * np.log(2 * np.pi * bandwidth**2)
  out = []
  for start in range(0, len(test_MxD), chunk):
    t_BxD = test_MxD[start : start + chunk]
    d2_BxN = np.maximum(np.sum(t_BxD**2, 1)[:, None] + sq_N[None] - 2 * t_BxD @ train_NxD.T, 0)
    out.append(log_norm - logsumexp(-d2_BxN / (2 * bandwidth**2), axis=1))
  return np.concatenate(out)


@baseline("iforest")
def iforest(x_train, x_test):
  forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(x_train)
  return -forest.score_samples(x_test)
