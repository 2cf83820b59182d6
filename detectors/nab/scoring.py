"""NAB scoring of one data file at one threshold (pure numpy, no I/O).

Faithful to numenta/NAB ``nab/sweeper.py`` (``calcSweepScore``, ``calcScoreByThreshold``,
``scoreDataSet``), which replaced the older per-file ``nab/scorer.py::Scorer`` with
identical results:

* rows before :func:`~accelpilot.detectors.nab.windows.probation_rows` are ignored;
* a row is a detection when ``anomaly_score >= threshold``;
* a window scores ``tp_weight * S(p) / S(-1)`` for its *earliest* detection, where
  ``S(p) = 2 * sigmoid(-5 p) - 1`` and ``p = -(right - i + 1) / width`` (rows), or
  ``-fn_weight`` when nothing in it is detected; later detections in the window add nothing;
* a detection outside every window costs ``fp_weight * S(q)``, ``q = |i - prev_right| /
  (prev_width - 1)`` measured from the preceding window (``S = -1`` for ``q > 3`` and for
  detections before the first window);
* true negatives score 0 (``tn_weight`` is carried but, as in NAB, never used).

>>> round(float(scaled_sigmoid(-1.0)), 5), round(float(scaled_sigmoid(0.0)), 5)
(0.98661, 0.0)
>>> float(scaled_sigmoid(3.5))
-1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Relative positions past a window beyond which an FP costs the full ``fp_weight``.
FAR_PAST_WINDOW_POSITION = 3.0
#: Window index of a row that lies outside every window.
OUTSIDE_WINDOW = -1


def scaled_sigmoid(relative_position: npt.ArrayLike) -> FloatArray:
    """NAB's ``scaledSigmoid``: ``2 * sigmoid(-5 * p) - 1``, and ``-1`` for ``p > 3``.

    ``p`` is -1 at a window's left edge (0.98661), 0 at its right edge and > 0 past it.
    """
    position = np.asarray(relative_position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 * (1.0 / (1.0 + np.exp(5.0 * position))) - 1.0
    return np.where(position > FAR_PAST_WINDOW_POSITION, -1.0, value)


#: Score of a detection at the very left edge of a window; NAB divides TP scores by it.
MAX_TP_UNWEIGHTED = float(scaled_sigmoid(-1.0))


@dataclass(frozen=True, slots=True)
class CostMatrix:
    """One NAB application profile (``config/profiles.json`` ``CostMatrix``)."""

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0

    def __post_init__(self) -> None:
        if min(self.tp_weight, self.fp_weight, self.fn_weight) < 0:
            raise ValueError(f"cost weights must be >= 0: {self}")

    @classmethod
    def from_nab(cls, cost_matrix: Mapping[str, float]) -> CostMatrix:
        """Build from NAB's ``{"tpWeight": .., "fpWeight": .., "fnWeight": .., "tnWeight": ..}``."""
        return cls(
            tp_weight=float(cost_matrix["tpWeight"]),
            fp_weight=float(cost_matrix["fpWeight"]),
            fn_weight=float(cost_matrix["fnWeight"]),
            tn_weight=float(cost_matrix.get("tnWeight", 1.0)),
        )


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Profile- and detector-independent facts about each row of one data file.

    Attributes:
        window_index: per row, the index of the window holding it, or ``OUTSIDE_WINDOW``.
        relative_position: per row, NAB's position ``p`` inside the window (in [-1, 0)) or
            ``q`` past the preceding window (> 0; ``inf`` before the first window).
        scorable: per row, ``row >= probation_rows``.
        window_scorable: per window, whether any of its rows is scorable (NAB only counts
            windows that reach past the probationary period).
    """

    window_index: IntArray
    relative_position: FloatArray
    scorable: BoolArray
    window_scorable: BoolArray

    @property
    def n_rows(self) -> int:
        """Rows in the file."""
        return len(self.window_index)

    @property
    def n_windows(self) -> int:
        """Windows in the file, scorable or not."""
        return len(self.window_scorable)


def row_layout(n_rows: int, window_spans_rows: IntArray, probation_rows: int) -> RowLayout:
    """Place every row of a file relative to its windows (NAB ``calcSweepScore``, part 1).

    Args:
        n_rows: rows in the file.
        window_spans_rows: ``(n_windows, 2)`` inclusive ``[first, last]`` row per window,
            in order and non-overlapping (see ``windows.window_row_spans``).
        probation_rows: rows at the start that are not scored.
    """
    spans = np.asarray(window_spans_rows, dtype=np.int64).reshape(-1, 2)
    rows = np.arange(n_rows, dtype=np.int64)
    window_index = np.full(n_rows, OUTSIDE_WINDOW, dtype=np.int64)
    position = np.full(n_rows, np.inf)  # before the first window: "far past" any window
    lefts, rights = spans[:, 0], spans[:, 1]
    if len(spans):
        widths_rows = (rights - lefts + 1).astype(np.float64)
        # Last window starting at or before each row; the row is inside it iff row <= right.
        started = np.searchsorted(lefts, rows, side="right") - 1
        inside = (started >= 0) & (rows <= rights[np.maximum(started, 0)])
        window_index[inside] = started[inside]
        win = started[inside]
        position[inside] = -(rights[win] - rows[inside] + 1) / widths_rows[win]
        # Preceding window of an outside row: the last one whose right edge is before it.
        prev = np.searchsorted(rights, rows, side="left") - 1
        after_a_window = ~inside & (prev >= 0)
        prev_win = prev[after_a_window]
        with np.errstate(divide="ignore"):  # a 1-row window: NAB divides by zero here
            position[after_a_window] = np.abs(rights[prev_win] - rows[after_a_window]) / (
                widths_rows[prev_win] - 1.0
            )
    return RowLayout(
        window_index=window_index,
        relative_position=position,
        scorable=rows >= probation_rows,
        window_scorable=rights >= probation_rows,
    )


def row_sweep_scores(layout: RowLayout, cost: CostMatrix) -> FloatArray:
    """Weighted score each row would add if it were a detection (NAB's ``sweepScore``).

    Inside a window: ``S(p) * tp_weight / S(-1)``; outside: ``S(q) * fp_weight``.
    """
    unweighted = scaled_sigmoid(layout.relative_position)
    inside = layout.window_index != OUTSIDE_WINDOW
    return np.where(
        inside, unweighted * cost.tp_weight / MAX_TP_UNWEIGHTED, unweighted * cost.fp_weight
    )


@dataclass(frozen=True, slots=True)
class FileScore:
    """NAB's result for one file at one threshold (a row of ``<detector>_<profile>_scores.csv``).

    Counts are numbers of scorable rows, as NAB's sweeper counts them: ``tp_count`` counts
    every detected row inside a window (not just the earliest), ``fn_count`` the undetected
    rows inside windows, ``fp_count``/``tn_count`` the detected/undetected rows outside.

    Attributes:
        raw_score: the file's un-normalized NAB score.
        window_scores: per window, the earliest detection's score or ``-fn_weight``;
            NaN for a window lying wholly in the probationary period (not counted).
        fp_row_indices: row indices of detections outside windows.
        fp_row_scores: their (negative) weighted scores.
    """

    raw_score: float
    tp_count: int
    tn_count: int
    fp_count: int
    fn_count: int
    window_scores: FloatArray
    fp_row_indices: IntArray
    fp_row_scores: FloatArray

    @property
    def scored_count(self) -> int:
        """Rows after the probationary period (NAB sweeper's ``total``)."""
        return self.tp_count + self.tn_count + self.fp_count + self.fn_count


def score_file(
    anomaly_scores: npt.ArrayLike, layout: RowLayout, cost: CostMatrix, threshold: float
) -> FileScore:
    """Score one file's anomaly scores at ``threshold`` (detection: ``score >= threshold``)."""
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != (layout.n_rows,):
        raise ValueError(f"expected {layout.n_rows} anomaly scores, got shape {scores.shape}")
    sweep = row_sweep_scores(layout, cost)
    detected = layout.scorable & (scores >= threshold)
    inside = layout.window_index != OUTSIDE_WINDOW

    window_scores = np.where(layout.window_scorable, -cost.fn_weight, np.nan)
    hits = detected & inside
    np.maximum.at(window_scores, layout.window_index[hits], sweep[hits])

    fp_mask = detected & ~inside
    fp_row_indices = np.flatnonzero(fp_mask).astype(np.int64)
    fp_row_scores = sweep[fp_mask]
    raw = float(fp_row_scores.sum() + window_scores[layout.window_scorable].sum())

    scorable_inside = int(np.count_nonzero(layout.scorable & inside))
    scorable_outside = int(np.count_nonzero(layout.scorable)) - scorable_inside
    tp = int(np.count_nonzero(hits))
    fp = len(fp_row_indices)
    return FileScore(
        raw_score=raw,
        tp_count=tp,
        tn_count=scorable_outside - fp,
        fp_count=fp,
        fn_count=scorable_inside - tp,
        window_scores=window_scores,
        fp_row_indices=fp_row_indices,
        fp_row_scores=fp_row_scores,
    )


@dataclass(frozen=True, slots=True)
class DetectorFile:
    """One data file's detector output, ready to score: the unit a corpus is made of.

    Attributes:
        relative_path: the data file relative to the data folder
            (e.g. ``realTraffic/speed_6005.csv``).
        anomaly_scores: the detector's ``anomaly_score`` per row.
        layout: where each row sits relative to the file's windows.
    """

    relative_path: str
    anomaly_scores: FloatArray
    layout: RowLayout

    def __post_init__(self) -> None:
        if self.anomaly_scores.shape != (self.layout.n_rows,):
            raise ValueError(
                f"{self.relative_path}: {self.anomaly_scores.shape} anomaly scores "
                f"for {self.layout.n_rows} rows"
            )
