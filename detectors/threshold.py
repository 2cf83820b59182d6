"""Thresholding lives here, not in detectors: scores in, alarms out.

>>> import numpy as np
>>> alarm = ThresholdAlarm(n_series=2, threshold=0.5, refractory_ns=10)
>>> alarm.update(np.array([0.9, 0.1]), 0).tolist()
[True, False]
>>> alarm.update(np.array([0.9, 0.6]), 5).tolist()  # series 0 is in its refractory time
[False, True]
>>> alarm.update(np.array([0.9, 0.6]), 10).tolist()
[True, False]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from accelpilot.detectors.base import BoolArray


class ThresholdAlarm:
    """``score >= threshold``, then quiet for ``refractory_ns`` per series after an alarm."""

    def __init__(self, n_series: int, threshold: float, refractory_ns: int = 0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.refractory_ns = int(refractory_ns)
        self.last_alarm_ns = np.full(n_series, np.iinfo(np.int64).min // 2, np.int64)

    def update(self, scores: npt.ArrayLike, ts_ns: int | npt.ArrayLike) -> BoolArray:
        s = np.asarray(scores, dtype=np.float64)
        ts = np.broadcast_to(np.asarray(ts_ns, dtype=np.int64), s.shape)
        alarm = (s >= self.threshold) & (ts - self.last_alarm_ns >= self.refractory_ns)
        self.last_alarm_ns = np.where(alarm, ts, self.last_alarm_ns)
        return alarm
