"""Ensemble: run several detectors on the same batch and keep the strongest evidence.

Members are calibrated the same way (surprise -> [0, 1]), so their scores are comparable;
the ensemble returns the largest member score per series (optionally weighted). Its state
is the members' states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray

#: Default members, chosen by NAB measurement (docs/detectors.md).
DEFAULT_MEMBERS: tuple[str, ...] = ("robust", "gaps")
#: Gaps at full weight cost 24 NAB points (unlabelled gaps in NAB's real files); at 0.3 a
#: vanished series still scores up to 0.3, below the value alarms NAB's threshold picks.
DEFAULT_WEIGHTS: tuple[float, ...] = (1.0, 0.3)


class Ensemble(BatchDetector):
    """Max of weighted member scores.

    Args:
        members: registered detector names.
        weights: per-member multiplier in (0, 1] (default 1 each).
        member_kwargs: keyword arguments per member name (e.g. ``{"peers": {"groups": g}}``).
    """

    name = "ensemble"

    def __init__(
        self,
        n_series: int,
        members: Sequence[str] = DEFAULT_MEMBERS,
        weights: Sequence[float] | None = None,
        member_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        from accelpilot.detectors.registry import make_detector

        super().__init__(n_series)
        kwargs = member_kwargs or {}
        self.members = [
            make_detector(m, n_series, seed=seed, **dict(kwargs.get(m, {}))) for m in members
        ]
        if weights is None:
            weights = DEFAULT_WEIGHTS if tuple(members) == DEFAULT_MEMBERS else [1.0] * len(members)
        self.weights = np.asarray(weights, dtype=np.float64)
        if len(self.weights) != len(self.members):
            raise ValueError("one weight per member")
        self.series_independent = all(getattr(m, "series_independent", False) for m in self.members)

    def member_scores(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        """``(n_members, n_series)`` scores of every member for one instant."""
        return np.stack([m._update_score(values, ts_ns, present) for m in self.members])

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        scores = self.member_scores(values, ts_ns, present) * self.weights[:, None]
        return np.clip(scores.max(axis=0), 0.0, 1.0)
