"""Multivariate device model: an online Gaussian (full-rank online PCA) per series.

Each series' feature vector is its metrics now plus ``lags`` past values of each metric
(a lag embedding, so a univariate series gets an autoregressive shape model). The detector
keeps an EW mean and covariance per series and scores the Mahalanobis distance of the new
vector, which is chi-square with ``dim`` degrees of freedom for Gaussian data: its tail
probability becomes surprise, then a calibrated score. Updates are down-weighted for far
outliers (Huber-style) so an anomaly does not become the new normal at once. Batched
linear algebra over series: ``(n, dim, dim)`` state, one ``solve`` per instant.
"""

from __future__ import annotations

import numpy as np
from scipy.special import chdtrc

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.calibrate import LN10, SurpriseCalibrator


class LagCovariance(BatchDetector):
    """Mahalanobis distance of (metrics, lagged metrics) under an EW Gaussian per series.

    Args:
        lags: past samples of each metric appended to the vector.
        alpha: EW weight of mean and covariance.
        ridge: covariance regularization, relative to its mean diagonal.
    """

    name = "covariance"
    #: Series never interact, so many files may share one instance (same scores).
    series_independent = True

    def __init__(
        self,
        n_series: int,
        lags: int = 3,
        alpha: float = 0.01,
        warmup: int = 50,
        ridge: float = 1e-3,
        s_half: float = 3.0,
        decay: float = 0.999,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        self.lags = int(lags)
        self.alpha = float(alpha)
        self.warmup = int(warmup)
        self.ridge = float(ridge)
        self.history = np.full((n_series, 0), np.nan)  # (n, f * (lags + 1)), newest first
        self.mean = np.zeros((n_series, 0))
        self.cov = np.zeros((n_series, 0, 0))
        self.count = np.zeros(n_series, np.int64)
        self.calibrator = SurpriseCalibrator(n_series, s_half, decay)

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        n, f = values.shape
        dim = f * (self.lags + 1)
        if self.history.shape[1] != dim:
            self.history = np.full((n, dim), np.nan)
            self.mean = np.zeros((n, dim))
            self.cov = np.zeros((n, dim, dim))
        # Shift the lag window of series that reported; absent series keep theirs.
        shifted = np.concatenate([values, self.history[:, : dim - f]], axis=1)
        self.history = np.where(present[:, None], shifted, self.history)
        x = self.history
        ok = present & ~np.isnan(x).any(axis=1)
        xv = np.where(ok[:, None], x, 0.0)

        diff = xv - self.mean
        diag = np.einsum("nii->n", self.cov) / dim
        reg = self.cov + (self.ridge * diag + 1e-12)[:, None, None] * np.eye(dim)
        d2 = np.einsum("ni,ni->n", diff, np.linalg.solve(reg, diff[:, :, None])[:, :, 0])
        warmed = ok & (self.count >= self.warmup)
        d2 = np.where(warmed, np.maximum(d2, 0.0), 0.0)
        with np.errstate(divide="ignore"):
            surprise = -np.log(np.maximum(chdtrc(dim, d2), 1e-300)) / LN10

        count = self.count + ok
        a = np.maximum(self.alpha, 1.0 / np.maximum(count, 1))
        # Huber-style weight: a vector far outside the model moves it less.
        limit = 9.0 * dim
        w = np.where(warmed & (d2 > limit), limit / np.maximum(d2, 1e-12), 1.0)
        a = np.where(ok, a * w, 0.0)
        self.mean = self.mean + a[:, None] * diff
        outer = diff[:, :, None] * diff[:, None, :]
        self.cov = (1.0 - a)[:, None, None] * (self.cov + a[:, None, None] * outer)
        self.count = count
        return self.calibrator.update(surprise, warmed)
