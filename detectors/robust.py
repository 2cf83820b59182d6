"""Robust statistical baseline: EWMA z-scores of levels and changes, at several time-scales.

For every feature of every series the detector tracks, per time-scale ``alpha``, an
exponentially weighted location and mean absolute deviation of the *level* ``x`` and of the
*change* ``x - x_prev``. Updates are Huber-clipped (a residual counts at most ``clip`` scales)
so one outlier does not drag the baseline. The statistic is the largest robust z over
features, level/change and time-scales, turned into surprise and calibrated
(:mod:`accelpilot.detectors.calibrate`). O(features x scales) per sample, no history kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.calibrate import SurpriseCalibrator, z_to_surprise

#: Mean absolute deviation -> standard deviation for normal data (sqrt(pi / 2)).
MAD_TO_SD = 1.2533


class EwRobustStats:
    """EW location and absolute deviation of ``(n_series, n_columns)`` streams, Huber-clipped.

    ``alphas`` (one per time-scale) broadcast over a trailing axis: state is ``(n, c, k)``.
    """

    def __init__(
        self, n_series: int, n_columns: int, alphas: Sequence[float], clip: float = 3.0
    ) -> None:
        shape = (n_series, n_columns, len(alphas))
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.clip = float(clip)
        self.loc = np.zeros(shape)
        self.dev = np.zeros(shape)
        self.count = np.zeros((n_series, n_columns))

    def z_then_update(self, x: FloatArray, min_count: int, rel_floor: float) -> FloatArray:
        """Robust z of ``x`` (``(n, c)``, NaN = skip) against the state, then learn ``x``.

        Returns ``(n, c, k)``; 0 where the column has fewer than ``min_count`` samples.
        """
        valid = ~np.isnan(x)
        xv = np.where(valid, x, 0.0)[:, :, None]
        scale = MAD_TO_SD * self.dev
        floor = rel_floor * np.abs(self.loc) + 1e-12
        resid = xv - self.loc
        z = np.abs(resid) / np.maximum(scale, floor)
        warmed = (self.count >= min_count) & valid
        z = np.where(warmed[:, :, None], z, 0.0)

        count = self.count + valid
        a = np.maximum(self.alphas, 1.0 / np.maximum(count, 1.0)[:, :, None])
        limit = np.where(
            self.count[:, :, None] >= min_count, self.clip * np.maximum(scale, floor), np.inf
        )
        r = np.clip(resid, -limit, limit)
        upd = valid[:, :, None]
        self.loc = np.where(upd, self.loc + a * r, self.loc)
        self.dev = np.where(upd, self.dev + a * (np.abs(r) - self.dev), self.dev)
        self.count = count
        return z


class RobustZ(BatchDetector):
    """EWMA/MAD z-scores of level and first difference at several time-scales.

    Args:
        alphas: EW weights, one per time-scale (0.05 ~ 20 samples, 0.002 ~ 500 samples).
        warmup: samples before a feature's z counts.
        s_half, decay, likelihood: calibration
            (:class:`~accelpilot.detectors.calibrate.SurpriseCalibrator`); the defaults are
            the best of the variants in docs/detectors.md, and held up in a split-half check.
    """

    name = "robust"
    #: Series never interact, so many files may share one instance (same scores).
    series_independent = True

    def __init__(
        self,
        n_series: int,
        alphas: Sequence[float] = (0.05, 0.005),
        warmup: int = 30,
        clip: float = 3.0,
        rel_floor: float = 1e-3,
        s_half: float = 1.0,
        decay: float = 0.99,
        likelihood: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        self.alphas = tuple(float(a) for a in alphas)
        self.warmup = int(warmup)
        self.clip = float(clip)
        self.rel_floor = float(rel_floor)
        self.stats: EwRobustStats | None = None  # sized on the first call (n_features)
        self.prev = np.full((n_series, 0), np.nan)
        self.calibrator = SurpriseCalibrator(n_series, s_half, decay, likelihood)

    def surprise(self, values: FloatArray) -> FloatArray:
        """Largest surprise per series over features, level/change and time-scales; learns."""
        n, f = values.shape
        if self.stats is None:
            self.stats = EwRobustStats(n, 2 * f, self.alphas, self.clip)
            self.prev = np.full((n, f), np.nan)
        change = values - self.prev
        z = self.stats.z_then_update(
            np.concatenate([values, change], axis=1), self.warmup, self.rel_floor
        )
        self.prev = np.where(np.isnan(values), self.prev, values)
        return z_to_surprise(z.reshape(n, -1).max(axis=1))

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        return self.calibrator.update(self.surprise(values), present)
