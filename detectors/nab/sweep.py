"""Corpus-level NAB: one threshold for all files, its optimization, and normalization.

NAB's optimizer (``nab/optimizer.py`` + ``Sweeper.calcScoreByThreshold``) pools the scorable
rows of every file, sorts them once by anomaly score (highest first) and lowers the
threshold one distinct score at a time, so every candidate threshold is scored in a single
pass. This module does the same pass with numpy (cumulative sums instead of a Python loop).
The normalized score (``nab/runner.py::normalize``) is
``100 * (raw - null) / (perfect - null)``, with ``null`` the score of a detector that never
fires (every scorable window missed) and ``perfect = tp_weight * windows in the label set``.

>>> normalized_score(raw_score=0.0, null_score=-53.0, perfect_score=53.0)
50.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from accelpilot.detectors.nab.scoring import (
    OUTSIDE_WINDOW,
    CostMatrix,
    DetectorFile,
    FileScore,
    FloatArray,
    IntArray,
    row_sweep_scores,
    score_file,
)

#: NAB's first sweep threshold, above every anomaly score in [0, 1]: no detections at all.
NAB_START_THRESHOLD = 1.1


@dataclass(frozen=True, slots=True)
class ThresholdSweep:
    """Corpus score at every distinct threshold, highest threshold first.

    Entry ``k`` holds the result of detecting every scorable row with
    ``anomaly_score >= thresholds[k]``; entry 0 is the no-detection start.
    Counts are numbers of scorable rows, summed over the corpus.
    """

    thresholds: FloatArray
    raw_scores: FloatArray
    tp_counts: IntArray
    tn_counts: IntArray
    fp_counts: IntArray
    fn_counts: IntArray

    def best_index(self) -> int:
        """Index of the highest raw score; ties go to the highest threshold (as NAB)."""
        return int(np.argmax(self.raw_scores))


def sweep_thresholds(files: Sequence[DetectorFile], cost: CostMatrix) -> ThresholdSweep:
    """Score the corpus at every distinct anomaly score, in one sorted pass.

    Raises:
        ValueError: an anomaly score is NaN (it has no place in the threshold order).
    """
    scores_parts, sweep_parts, window_parts = [], [], []
    window_offset = 0
    for f in files:
        keep = f.layout.scorable
        scores_parts.append(f.anomaly_scores[keep])
        sweep_parts.append(row_sweep_scores(f.layout, cost)[keep])
        wi = f.layout.window_index[keep]
        window_parts.append(np.where(wi == OUTSIDE_WINDOW, OUTSIDE_WINDOW, wi + window_offset))
        window_offset += f.layout.n_windows
    scores = np.concatenate(scores_parts) if files else np.empty(0)
    sweep = np.concatenate(sweep_parts) if files else np.empty(0)
    window_id = np.concatenate(window_parts).astype(np.int64) if files else np.empty(0, np.int64)
    if np.isnan(scores).any():
        raise ValueError("anomaly scores contain NaN")
    n_scorable_windows = sum(int(f.layout.window_scorable.sum()) for f in files)

    # Highest score first; ``order`` holds pooled row indices (file row order is kept).
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_window = window_id[order]
    inside = sorted_window != OUTSIDE_WINDOW
    n = len(order)

    # FPs add their score as they appear; windows change when their earliest detection does.
    step_change = np.where(inside, 0.0, sweep[order])
    pos, change = _window_score_changes(sorted_window, order, sweep, cost.fn_weight)
    step_change[pos] = change

    start_score = -cost.fn_weight * n_scorable_windows
    # Extended precision keeps the running total within ~1e-12 of a fresh sum at every step.
    running = (start_score + np.cumsum(step_change, dtype=np.longdouble)).astype(np.float64)
    # One record per distinct score: the state after its last row is processed.
    run_ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], n > 0))
    tp = np.cumsum(inside)[run_ends]
    fp = np.cumsum(~inside)[run_ends]
    n_inside = int(inside.sum())
    start_threshold = NAB_START_THRESHOLD
    if n and sorted_scores[0] >= NAB_START_THRESHOLD:
        start_threshold = float(np.nextafter(sorted_scores[0], np.inf))
    return ThresholdSweep(
        thresholds=np.concatenate(([start_threshold], sorted_scores[run_ends])),
        raw_scores=np.concatenate(([start_score], running[run_ends])),
        tp_counts=np.concatenate(([0], tp)).astype(np.int64),
        tn_counts=np.concatenate(([n - n_inside], (n - n_inside) - fp)).astype(np.int64),
        fp_counts=np.concatenate(([0], fp)).astype(np.int64),
        fn_counts=np.concatenate(([n_inside], n_inside - tp)).astype(np.int64),
    )


def _window_score_changes(
    sorted_window: IntArray, order: IntArray, sweep: FloatArray, fn_weight: float
) -> tuple[IntArray, FloatArray]:
    """How much each in-window detection changes the corpus score, in sweep order.

    A window scores its earliest detected row (the largest score in the window), or
    ``-fn_weight`` before any. The earliest row so far is tracked per window with one running
    max over a key ordering rows by window, then earliest-row-first (exact in int64).

    Args:
        sorted_window: pooled window id per sweep step (``OUTSIDE_WINDOW`` outside).
        order: pooled row index per sweep step.
        sweep: per pooled row, the score it adds when detected.

    Returns:
        The sweep steps that fall inside windows, and the score change at each.
    """
    pos = np.flatnonzero(sorted_window != OUTSIDE_WINDOW)
    if not len(pos):
        return pos, np.empty(0)
    group = sorted_window[pos]
    by_group = np.lexsort((pos, group))
    group, pos = group[by_group], pos[by_group]
    span = len(order) + 1
    key = group * span + (span - 1 - order[pos])
    earliest_row = (span - 1) - (np.maximum.accumulate(key) - group * span)
    best = sweep[earliest_row]
    previous = np.empty_like(best)
    previous[1:] = best[:-1]
    first_in_group = np.ones(len(group), dtype=bool)
    first_in_group[1:] = group[1:] != group[:-1]
    previous[first_in_group] = -fn_weight
    return pos, best - previous


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """NAB's scoring step for one detector and profile at one threshold."""

    threshold: float
    raw_score: float
    file_scores: dict[str, FileScore]


def score_corpus(files: Sequence[DetectorFile], cost: CostMatrix, threshold: float) -> CorpusScore:
    """Score every file at ``threshold`` and total the raw scores (NAB ``scoreCorpus``)."""
    file_scores = {
        f.relative_path: score_file(f.anomaly_scores, f.layout, cost, threshold) for f in files
    }
    raw = float(sum(s.raw_score for s in file_scores.values()))
    return CorpusScore(threshold=threshold, raw_score=raw, file_scores=file_scores)


def null_score(files: Sequence[DetectorFile], cost: CostMatrix) -> float:
    """Raw score of NAB's null detector (never fires): ``-fn_weight`` per scorable window."""
    return float(-cost.fn_weight * sum(int(f.layout.window_scorable.sum()) for f in files))


def perfect_score(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of a perfect detector, as NAB normalizes: ``tp_weight`` per labelled window."""
    return float(cost.tp_weight * n_windows)


def normalized_score(raw_score: float, null_score: float, perfect_score: float) -> float:
    """NAB's reported score: 0 for the null detector, 100 for a perfect one."""
    if perfect_score == null_score:
        raise ValueError("perfect and null scores are equal: the label set has no windows")
    return 100.0 * (raw_score - null_score) / (perfect_score - null_score)


@dataclass(frozen=True, slots=True)
class BenchmarkScore:
    """A detector's NAB result for one profile: threshold, raw and normalized score."""

    threshold: float
    raw_score: float
    normalized_score: float


def benchmark(
    files: Sequence[DetectorFile],
    cost: CostMatrix,
    n_windows: int,
    threshold: float | None = None,
) -> BenchmarkScore:
    """NAB's optimize + score + normalize for one detector and profile.

    Args:
        files: the detector's output on each data file of the corpus.
        cost: the profile's cost matrix.
        n_windows: windows in the label set (NAB's ``tpCount``), for the perfect score.
        threshold: a fixed threshold (e.g. NAB's stored ``thresholds.json`` value);
            ``None`` optimizes one threshold over ``files`` first.
    """
    if threshold is None:
        sweep = sweep_thresholds(files, cost)
        threshold = float(sweep.thresholds[sweep.best_index()])
    raw = score_corpus(files, cost, threshold).raw_score
    return BenchmarkScore(
        threshold=threshold,
        raw_score=raw,
        normalized_score=normalized_score(
            raw, null_score(files, cost), perfect_score(n_windows, cost)
        ),
    )
