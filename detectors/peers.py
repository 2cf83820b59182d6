"""Peer-group detector: a device that diverges from its siblings on the same host or job.

Series are grouped (``groups[i]`` = host or job id of series ``i``). At each instant a
series' *peer gap* is its value minus the mean of the other present members of its group
(leave-one-out, so a diverging device does not pull its own reference). A persistent offset
(a device that always runs a little hotter) is learned per series by robust EW statistics of
the gap; the score is the surprise of today's gap against that history, calibrated. Groups
with fewer than ``min_peers`` other members present give 0. With no ``groups`` every series
is alone and the detector never fires (e.g. on NAB, whose files are unrelated).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.calibrate import SurpriseCalibrator, z_to_surprise
from accelpilot.detectors.robust import EwRobustStats


class PeerGroup(BatchDetector):
    """Leave-one-out peer gap, robust z against each series' own gap history."""

    name = "peers"

    def __init__(
        self,
        n_series: int,
        groups: npt.ArrayLike | None = None,
        min_peers: int = 2,
        alphas: Sequence[float] = (0.01,),
        warmup: int = 30,
        s_half: float = 3.0,
        decay: float = 0.999,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        g = np.arange(n_series) if groups is None else np.asarray(groups)
        if g.shape != (n_series,):
            raise ValueError(f"groups must be ({n_series},); got {g.shape}")
        self.group_index = np.unique(g, return_inverse=True)[1].astype(np.int64)
        self.n_groups = int(self.group_index.max()) + 1
        self.min_peers = int(min_peers)
        self.alphas = tuple(alphas)
        self.warmup = int(warmup)
        self.stats: EwRobustStats | None = None
        self.calibrator = SurpriseCalibrator(n_series, s_half, decay)

    def peer_gap(self, values: FloatArray) -> FloatArray:
        """``(n, f)``: value minus the leave-one-out mean of its group (NaN without peers)."""
        n, f = values.shape
        here = ~np.isnan(values)
        x = np.where(here, values, 0.0)
        gap = np.full((n, f), np.nan)
        for j in range(f):  # features are few; series are many (bincount is vectorized)
            total = np.bincount(self.group_index, weights=x[:, j], minlength=self.n_groups)
            count = np.bincount(self.group_index, weights=here[:, j], minlength=self.n_groups)
            others = count[self.group_index] - here[:, j]
            mean_others = (total[self.group_index] - x[:, j]) / np.maximum(others, 1)
            ok = here[:, j] & (others >= self.min_peers)
            gap[:, j] = np.where(ok, x[:, j] - mean_others, np.nan)
        return gap

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        gap = self.peer_gap(values)
        if self.stats is None:
            self.stats = EwRobustStats(self.n_series, gap.shape[1], self.alphas)
        z = self.stats.z_then_update(gap, self.warmup, rel_floor=1e-3)
        surprise = z_to_surprise(z.reshape(self.n_series, -1).max(axis=1))
        return self.calibrator.update(surprise, present & ~np.isnan(gap).all(axis=1))
