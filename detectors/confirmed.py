"""Novelty confirmed by magnitude: ARTime's alarms weighted by the robust z-score detector.

ARTime (:mod:`.artime`) decides *when* something new happens: a downsampled window whose
shape matches no learnt category. Its confidence measures how far below its vigilance the
match lies, which says nothing about how large the change is against the series' own
recent spread, so a small wiggle that happens to be a new shape can score as high as an
outage. The robust detector (:mod:`.robust`) measures exactly that spread-relative size.

Score: ``artime * (floor + (1 - floor) * robust)`` on the same sample; zero wherever ARTime
is silent, so ARTime's one-alarm-per-episode masking is kept, and among its alarms those
with a large, sudden value change rank first. Both members learn every sample (strictly
streaming). ``floor`` (0.2) keeps a novelty with an unremarkable magnitude a fifth of its
weight; docs/detectors.md lists the floors tried on NAB and a split-half check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accelpilot.detectors.artime import ARTime
from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.robust import RobustZ

#: Weight a novelty keeps when the robust detector sees nothing unusual.
DEFAULT_FLOOR = 0.2


class ConfirmedNovelty(BatchDetector):
    """``artime * (floor + (1 - floor) * robust)``.

    Args:
        floor: weight of an ARTime alarm whose robust score is 0, in [0, 1].
        artime_kwargs: passed to :class:`~accelpilot.detectors.artime.ARTime`.
        value_min, value_max, n_samples: NAB protocol hints, passed to ARTime (see there).
        seed: passed to both members.
    """

    name = "artime_robust"
    series_independent = True
    takes_file_range = True

    def __init__(
        self,
        n_series: int,
        floor: float = DEFAULT_FLOOR,
        artime_kwargs: dict[str, Any] | None = None,
        value_min: Any = None,
        value_max: Any = None,
        n_samples: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.floor = float(floor)
        self.novelty = ARTime(
            n_series,
            value_min=value_min,
            value_max=value_max,
            n_samples=n_samples,
            seed=seed,
            **(artime_kwargs or {}),
        )
        self.magnitude = RobustZ(n_series, seed=seed)

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        novelty = self.novelty._update_score(values, ts_ns, present)
        magnitude = self.magnitude._update_score(values, ts_ns, present)
        return np.clip(novelty * (self.floor + (1.0 - self.floor) * magnitude), 0.0, 1.0)
