"""Turn raw surprise into a calibrated score in [0, 1], one series at a time (vectorized).

Every detector ends the same way: a per-series statistic (a robust z-score, a forecast
error, a distance) becomes *surprise* ``s = -log10(tail probability)``, and surprise becomes
a score with :class:`SurpriseCalibrator`:

* ``absolute = s / (s + s_half)``: 0.5 at a tail probability of ``10**-s_half``;
* ``relative = r / (1 + r)`` with ``r = s / m``, ``m`` the series' own recent maximum surprise
  (a running max that decays by ``decay`` per sample). A record high gives ``>= 0.5``; the
  same surprise right after a bigger one gives less. This is the "spike, then quiet" rule:
  repeated alarms for one event are damped without a threshold inside the detector;
* ``score = absolute * relative``.

>>> import numpy as np
>>> round(float(z_to_surprise(np.array([3.0]))[0]), 3)  # two-sided p = 0.0027
2.569
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from accelpilot.detectors.base import BoolArray, FloatArray

LN10 = float(np.log(10.0))


def z_to_surprise(z: FloatArray) -> FloatArray:
    """``-log10`` of the two-sided normal tail probability of ``|z|`` (0 at z = 0)."""
    z = np.abs(np.nan_to_num(z, nan=0.0, posinf=40.0))
    return np.maximum(-(log_ndtr(-z) + np.log(2.0)) / LN10, 0.0)


class SurpriseCalibrator:
    """Per-series state that maps surprise to [0, 1] (see the module docstring)."""

    def __init__(
        self,
        n_series: int,
        s_half: float = 3.0,
        decay: float = 0.999,
        likelihood: bool = False,
        short_alpha: float = 0.2,
        long_alpha: float = 0.002,
    ) -> None:
        self.s_half = float(s_half)
        self.decay = float(decay)
        self.recent_max = np.zeros(n_series)
        # Optional HTM-style anomaly likelihood: short mean of surprise vs its long history.
        self.likelihood = bool(likelihood)
        self.short_alpha = float(short_alpha)
        self.long_alpha = float(long_alpha)
        self.short = np.zeros(n_series)
        self.long_mean = np.zeros(n_series)
        self.long_var = np.zeros(n_series)
        self.count = np.zeros(n_series)

    def update(self, surprise: FloatArray, valid: BoolArray) -> FloatArray:
        s = np.where(valid, np.maximum(surprise, 0.0), 0.0)
        if self.likelihood:
            s = self._likelihood(s, valid)
        absolute = s / (s + self.s_half)
        ratio = s / np.maximum(self.recent_max, 1e-3 * self.s_half)
        relative = ratio / (1.0 + ratio)
        self.recent_max = np.where(
            valid, np.maximum(self.recent_max * self.decay, s), self.recent_max
        )
        return absolute * relative

    def _likelihood(self, s: FloatArray, valid: BoolArray) -> FloatArray:
        """Surprise of the short-term mean surprise against its long-term mean and spread."""
        short = np.where(valid, self.short + self.short_alpha * (s - self.short), self.short)
        sd = np.sqrt(self.long_var) + 1e-3
        z = np.where(self.count > 50, np.maximum(short - self.long_mean, 0.0) / sd, 0.0)
        out = z_to_surprise(z) - np.log10(2.0)  # one-sided
        count = self.count + valid
        a = np.where(valid, np.maximum(self.long_alpha, 1.0 / np.maximum(count, 1)), 0.0)
        d = short - self.long_mean
        self.long_mean = self.long_mean + a * d
        self.long_var = (1 - a) * (self.long_var + a * d * d)
        self.short, self.count = short, count
        return np.maximum(out, 0.0)
