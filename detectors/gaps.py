"""Monitoring-gap detector: missing samples and vanishing series are a failure signal.

Each (series, feature) learns its typical sampling interval (EW mean of intervals between
present samples, gaps excluded). The score is how long the feature has now been silent
(or, on the sample that ends a gap, how long the gap was) in typical intervals:
``g = max(log2(elapsed / typical) - 1, 0)``, score ``g / (1 + g)``; so 2 intervals score 0,
4 intervals 0.5, 16 intervals 0.75. A series or metric that vanishes keeps rising toward 1.
The values themselves are ignored.
"""

from __future__ import annotations

import numpy as np

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray


class MonitoringGaps(BatchDetector):
    """Score silence per series: the longest current gap over its features.

    Args:
        alpha: EW weight for the typical interval.
        min_intervals: intervals seen before a feature's gaps count.
        learn_below: intervals longer than this many typical ones are gaps, not learned.
    """

    name = "gaps"
    #: Series never interact, so many files may share one instance (same scores).
    series_independent = True

    def __init__(
        self,
        n_series: int,
        alpha: float = 0.02,
        min_intervals: int = 5,
        learn_below: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        self.alpha = float(alpha)
        self.min_intervals = int(min_intervals)
        self.learn_below = float(learn_below)
        self.last_ts = np.zeros((n_series, 0), np.int64)
        self.typical_ns = np.zeros((n_series, 0))
        self.n_intervals = np.zeros((n_series, 0), np.int64)
        self.seen = np.zeros((n_series, 0), bool)

    def _size(self, n_features: int) -> None:
        if self.last_ts.shape[1] != n_features:
            shape = (self.n_series, n_features)
            self.last_ts = np.zeros(shape, np.int64)
            self.typical_ns = np.zeros(shape)
            self.n_intervals = np.zeros(shape, np.int64)
            self.seen = np.zeros(shape, bool)

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        self._size(values.shape[1])
        here = ~np.isnan(values)
        ts = ts_ns[:, None]
        elapsed = (ts - self.last_ts).astype(np.float64)
        known = self.seen & (self.n_intervals >= self.min_intervals) & (self.typical_ns > 0)
        ratio = np.where(known, elapsed / np.maximum(self.typical_ns, 1.0), 0.0)
        g = np.maximum(np.log2(np.maximum(ratio, 1e-12)) - 1.0, 0.0)
        score = (g / (1.0 + g)).max(axis=1)

        # Learn intervals from present samples that are not themselves gaps.
        interval = self.seen & here & (elapsed > 0)
        learn = interval & ((ratio <= self.learn_below) | ~known)
        count = self.n_intervals + learn
        a = np.maximum(self.alpha, 1.0 / np.maximum(count, 1))
        self.typical_ns = np.where(
            learn, self.typical_ns + a * (elapsed - self.typical_ns), self.typical_ns
        )
        self.n_intervals = count
        self.last_ts = np.where(here, ts, self.last_ts)
        self.seen |= here
        return score
