"""The NAB scorer reproduces numenta/NAB's own scores on the shared NAB data.

What the stored data permits (``shared/data/nab``, see its README):

* the Numenta HTM detector's raw outputs (31 files) with NAB's per-row ``S(t)`` columns, and
  NAB's per-file score tables for it: checked row by row, file by file and for the corpus;
* per-file raw scores (at NAB's stored full-corpus thresholds) for 16 detectors, but no raw
  outputs for them: their 31-file normalized scores follow from NAB's own per-file raw scores
  plus this scorer's probation, windows and normalization;
* ``thresholds.json`` raw totals and ``final_results.json`` on NAB's full 58-file corpus
  (116 windows): checked through the normalization formula.
"""

from __future__ import annotations

import doctest
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from accelpilot.detectors import nab
from accelpilot.detectors.nab import (
    CostMatrix,
    DetectorFile,
    StoredFileScore,
    count_windows,
    load_detector_corpus,
    load_profiles,
    load_stored_file_scores,
    load_thresholds,
    load_windows,
    normalized_score,
    null_score,
    perfect_score,
    row_layout,
    row_sweep_scores,
    score_corpus,
    score_file,
    sweep_thresholds,
)
from accelpilot.detectors.nab import corpus as nab_corpus
from accelpilot.detectors.nab import scoring as nab_scoring
from accelpilot.detectors.nab import sweep as nab_sweep
from accelpilot.detectors.nab import windows as nab_windows


def _nab_dir() -> Path:
    env = os.environ.get("ACCELPILOT_NAB_DIR")
    if env:
        return Path(env)
    return (Path(__file__).parents[2] / ".." / "shared" / "data" / "nab").resolve()


NAB_DIR = _nab_dir()

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
N_SHARED_FILES = 31
N_SHARED_WINDOWS = 53
N_FULL_CORPUS_WINDOWS = 116  # NAB's 58 files; normalizes thresholds.json / final_results.json

#: NAB's stored per-file scores print 12 significant digits; scores are below 10 in size.
STORED_DIGITS_ABS = 1e-9

#: Normalized scores on the 31 shared files, one threshold per detector and profile (NAB's
#: stored one), from NAB's own per-file raw scores; the table in this task's report.
#: ``random`` is left out: its stored table covers 15 files and predates the current data
#: (its row counts do not add up to the files' lengths).
NORMALIZED_31_FILES: dict[str, dict[str, float]] = {
    "ARTime": {"standard": 73.55, "reward_low_FP_rate": 65.59, "reward_low_FN_rate": 78.59},
    "bayesChangePt": {"standard": 14.63, "reward_low_FP_rate": -7.65, "reward_low_FN_rate": 35.91},
    "contextOSE": {"standard": 66.13, "reward_low_FP_rate": 62.76, "reward_low_FN_rate": 69.62},
    "earthgeckoSkyline": {
        "standard": 51.57,
        "reward_low_FP_rate": 47.28,
        "reward_low_FN_rate": 54.50,
    },
    "expose": {"standard": 22.36, "reward_low_FP_rate": 3.51, "reward_low_FN_rate": 29.52},
    "htmjava": {"standard": 65.59, "reward_low_FP_rate": 51.21, "reward_low_FN_rate": 70.14},
    "knncad": {"standard": 52.54, "reward_low_FP_rate": 38.72, "reward_low_FN_rate": 59.56},
    "null": {"standard": 0.0, "reward_low_FP_rate": 0.0, "reward_low_FN_rate": 0.0},
    "numenta": {"standard": 69.52, "reward_low_FP_rate": 62.88, "reward_low_FN_rate": 74.02},
    "numentaTM": {"standard": 63.04, "reward_low_FP_rate": 55.29, "reward_low_FN_rate": 67.18},
    "randomCutForest": {
        "standard": 50.64,
        "reward_low_FP_rate": 29.34,
        "reward_low_FN_rate": 55.40,
    },
    "relativeEntropy": {
        "standard": 54.07,
        "reward_low_FP_rate": 45.04,
        "reward_low_FN_rate": 59.32,
    },
    "skyline": {"standard": 31.90, "reward_low_FP_rate": 15.54, "reward_low_FN_rate": 33.85},
    "twitterADVec": {"standard": 44.10, "reward_low_FP_rate": 36.83, "reward_low_FN_rate": 48.27},
    "windowedGaussian": {
        "standard": 37.09,
        "reward_low_FP_rate": 32.72,
        "reward_low_FN_rate": 39.82,
    },
}

#: ARCHITECTURE.md's anchors (standard profile, 31 shared files, one threshold).
ANCHORS_STANDARD_31 = {"ARTime": 73.5, "numenta": 69.5, "contextOSE": 66.1, "knncad": 52.5}
#: Anchors the stored data cannot reach: the stored threshold (optimized by NAB on 58 files)
#: gives 50.64 and 37.09; a threshold re-optimized on the 31 files needs the detectors' raw
#: outputs, which are not stored. A fixed threshold can only score at most the optimum.
ANCHORS_NEEDING_RAW_OUTPUTS = {"randomCutForest": 61.3, "windowedGaussian": 37.7}

#: ``thresholds.json`` totals that NAB's ``final_results.json`` was computed from. The other
#: entries (htmjava, knncad, random, twitterADVec, windowedGaussian, bayesChangePt) are stale
#: in NAB's repository (e.g. knncad's is a 0.0 placeholder).
CONSISTENT_FULL_CORPUS = (
    "ARTime",
    "contextOSE",
    "earthgeckoSkyline",
    "expose",
    "null",
    "numenta",
    "numentaTM",
    "randomCutForest",
    "relativeEntropy",
    "skyline",
)


# ---------------------------------------------------------------- fixtures (module cache)


@pytest.fixture(scope="module")
def nab_dir() -> Path:
    """The NAB data folder; tests that need it skip when it is absent."""
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found at {NAB_DIR}; set ACCELPILOT_NAB_DIR to an NAB folder")
    return NAB_DIR


@pytest.fixture(scope="module")
def windows(nab_dir: Path) -> dict[str, list[tuple[str, str]]]:
    return load_windows(nab_dir / "labels" / "combined_windows.json")


@pytest.fixture(scope="module")
def profiles(nab_dir: Path) -> dict[str, CostMatrix]:
    return load_profiles(nab_dir / "config" / "profiles.json")


@pytest.fixture(scope="module")
def thresholds(nab_dir: Path) -> dict[str, dict[str, nab.StoredThreshold]]:
    return load_thresholds(nab_dir / "config" / "thresholds.json")


@pytest.fixture(scope="module")
def numenta_files(nab_dir: Path, windows: dict[str, list[tuple[str, str]]]) -> list[DetectorFile]:
    return load_detector_corpus(nab_dir, nab_dir / "results", "numenta", windows)


@pytest.fixture(scope="module")
def numenta_results(nab_dir: Path) -> dict[str, nab.DetectorResults]:
    return {
        p: nab.load_detector_results(nab_dir / "results", "numenta", p)
        for p in nab.list_data_files(nab_dir)
    }


@pytest.fixture(scope="module")
def stored_tables(nab_dir: Path) -> dict[tuple[str, str], list[StoredFileScore]]:
    tables = {}
    for path in sorted((nab_dir / "results" / "per_file_scores").glob("*_scores.csv")):
        rows = load_stored_file_scores(path)
        tables[(rows[0].detector, rows[0].profile)] = rows
    return tables


def _stored(
    tables: dict[tuple[str, str], list[StoredFileScore]], detector: str, profile: str
) -> dict[str, StoredFileScore]:
    return {row.relative_path: row for row in tables[(detector, profile)]}


def _stored_normalized(
    tables: dict[tuple[str, str], list[StoredFileScore]],
    files: Sequence[DetectorFile],
    detector: str,
    profile: str,
    cost: CostMatrix,
) -> float:
    rows = tables[(detector, profile)]
    assert len(rows) == N_SHARED_FILES
    raw = math.fsum(r.raw_score for r in rows)
    return normalized_score(raw, null_score(files, cost), perfect_score(N_SHARED_WINDOWS, cost))


# ---------------------------------------------------------------- corpus shape


def test_doctests_pass() -> None:
    for module in (nab_windows, nab_scoring, nab_sweep, nab_corpus):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_corpus_has_31_files_and_53_windows(
    windows: dict[str, list[tuple[str, str]]], numenta_files: list[DetectorFile]
) -> None:
    assert len(numenta_files) == N_SHARED_FILES
    assert count_windows(windows) == N_SHARED_WINDOWS
    assert sum(int(f.layout.window_scorable.sum()) for f in numenta_files) == N_SHARED_WINDOWS


def test_row_counts_match_every_stored_table(
    numenta_files: list[DetectorFile],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    """Probation and window spans, per file, against NAB's TP/TN/FP/FN of all 15 detectors."""
    checked = 0
    for (detector, _profile), rows in stored_tables.items():
        if detector == "random":  # stale table, see NORMALIZED_31_FILES
            continue
        by_path = {r.relative_path: r for r in rows}
        for f in numenta_files:
            row = by_path[f.relative_path]
            scored = f.layout.scorable
            in_window = int(np.count_nonzero(scored & (f.layout.window_index >= 0)))
            assert row.tp_count + row.fn_count == in_window, (detector, f.relative_path)
            assert row.tn_count + row.fp_count == int(scored.sum()) - in_window
            # Older per-file scorer: file length; sweeper (ARTime): scored rows.
            assert row.total_count in (f.layout.n_rows, int(scored.sum()))
            checked += 1
    assert checked == 15 * 3 * N_SHARED_FILES


def test_null_detector_matches_nab(
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    for profile in PROFILES:
        cost = profiles[profile]
        stored = _stored(stored_tables, "null", profile)
        for f in numenta_files:
            never = score_file(np.zeros(f.layout.n_rows), f.layout, cost, threshold=0.5)
            assert never.raw_score == pytest.approx(stored[f.relative_path].raw_score, abs=1e-12)
        assert null_score(numenta_files, cost) == -cost.fn_weight * N_SHARED_WINDOWS


# ---------------------------------------------------------------- Numenta HTM, from raw outputs


@pytest.mark.parametrize("profile", PROFILES)
def test_numenta_per_file_scores_match_nab(
    profile: str,
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    thresholds: dict[str, dict[str, nab.StoredThreshold]],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    threshold = thresholds["numenta"][profile]
    stored = _stored(stored_tables, "numenta", profile)
    for f in numenta_files:
        mine = score_file(f.anomaly_scores, f.layout, profiles[profile], threshold.threshold)
        ref = stored[f.relative_path]
        assert mine.raw_score == pytest.approx(ref.raw_score, abs=STORED_DIGITS_ABS), f
        counts = (mine.tp_count, mine.tn_count, mine.fp_count, mine.fn_count)
        assert counts == (ref.tp_count, ref.tn_count, ref.fp_count, ref.fn_count), f


@pytest.mark.parametrize("profile", PROFILES)
def test_numenta_row_scores_match_nab_s_t_column(
    profile: str,
    numenta_files: list[DetectorFile],
    numenta_results: dict[str, nab.DetectorResults],
    profiles: dict[str, CostMatrix],
    thresholds: dict[str, dict[str, nab.StoredThreshold]],
) -> None:
    """NAB wrote ``S(t)_<profile>``: each window's score on its first row, each FP's on its row."""
    threshold = thresholds["numenta"][profile]
    for f in numenta_files:
        mine = score_file(f.anomaly_scores, f.layout, profiles[profile], threshold.threshold)
        rows = np.zeros(f.layout.n_rows)
        first_rows = np.array(
            [np.flatnonzero(f.layout.window_index == k)[0] for k in range(f.layout.n_windows)],
            dtype=np.int64,
        )
        rows[first_rows] = mine.window_scores
        rows[mine.fp_row_indices] = mine.fp_row_scores
        expected = numenta_results[f.relative_path].numeric_columns[f"S(t)_{profile}"]
        np.testing.assert_allclose(rows, expected, rtol=0, atol=STORED_DIGITS_ABS, err_msg=str(f))


@pytest.mark.parametrize("profile", PROFILES)
def test_numenta_corpus_score_on_31_files(
    profile: str,
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    thresholds: dict[str, dict[str, nab.StoredThreshold]],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    cost = profiles[profile]
    reference = _stored_normalized(stored_tables, numenta_files, "numenta", profile, cost)
    stored_threshold = thresholds["numenta"][profile]

    fixed = nab.benchmark(numenta_files, cost, N_SHARED_WINDOWS, stored_threshold.threshold)
    optimized = nab.benchmark(numenta_files, cost, N_SHARED_WINDOWS)

    assert fixed.normalized_score == pytest.approx(reference, abs=1e-8)
    assert fixed.normalized_score == pytest.approx(
        NORMALIZED_31_FILES["numenta"][profile], abs=5e-3
    )
    # On these 31 files the optimum picks the same detections as NAB's 58-file threshold.
    assert optimized.raw_score == pytest.approx(fixed.raw_score, abs=1e-9)
    assert optimized.threshold >= stored_threshold.threshold


def _incremental_sweep(
    files: Sequence[DetectorFile], cost: CostMatrix
) -> list[tuple[float, float]]:
    """Scalar oracle: lower the threshold one row at a time, scores summed afresh per record."""
    rows: list[tuple[float, float, tuple[int, int] | None]] = []
    window_parts: dict[tuple[int, int], float] = {}
    for n, f in enumerate(files):
        sweep = row_sweep_scores(f.layout, cost)
        for i in np.flatnonzero(f.layout.scorable):
            k = int(f.layout.window_index[i])
            key = (n, k) if k >= 0 else None
            if key is not None:
                window_parts[key] = -cost.fn_weight
            rows.append((float(f.anomaly_scores[i]), float(sweep[i]), key))
    rows.sort(key=lambda r: r[0], reverse=True)
    records: list[tuple[float, float]] = []
    threshold, fp_part = 1.1, 0.0
    for score, value, key in rows:
        if score != threshold:
            records.append((threshold, fp_part + sum(window_parts.values())))
            threshold = score
        if key is None:
            fp_part += value
        else:
            window_parts[key] = max(window_parts[key], value)
    records.append((threshold, fp_part + sum(window_parts.values())))
    return records


def test_vectorized_sweep_matches_scalar_sweep_at_every_threshold(
    numenta_files: list[DetectorFile], profiles: dict[str, CostMatrix]
) -> None:
    cost = profiles["standard"]
    sweep = sweep_thresholds(numenta_files, cost)
    oracle = np.array(_incremental_sweep(numenta_files, cost))
    assert len(sweep.thresholds) == len(oracle) > 20_000
    np.testing.assert_array_equal(sweep.thresholds, oracle[:, 0])
    np.testing.assert_allclose(sweep.raw_scores, oracle[:, 1], rtol=1e-12, atol=1e-9)
    assert sweep.best_index() == int(np.argmax(oracle[:, 1]))


def test_sweep_matches_direct_scoring_on_a_small_corpus_with_ties() -> None:
    rng = np.random.default_rng(7)
    cost = CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=2.0)
    files = []
    for n, (n_rows, spans) in enumerate(
        [(200, [[40, 60], [120, 150]]), (150, [[10, 30], [100, 149]]), (90, [])]
    ):
        layout = row_layout(n_rows, np.array(spans, dtype=np.int64).reshape(-1, 2), 25)
        scores = np.round(rng.random(n_rows), 2)  # many ties between and within files
        files.append(DetectorFile(f"synthetic/file_{n}.csv", scores, layout))
    sweep = sweep_thresholds(files, cost)
    for k, threshold in enumerate(sweep.thresholds):
        direct = score_corpus(files, cost, float(threshold))
        per_file = direct.file_scores.values()
        assert sweep.raw_scores[k] == pytest.approx(direct.raw_score, abs=1e-12)
        assert sweep.tp_counts[k] == sum(s.tp_count for s in per_file)
        assert sweep.fp_counts[k] == sum(s.fp_count for s in per_file)
        assert sweep.fn_counts[k] == sum(s.fn_count for s in per_file)
        assert sweep.tn_counts[k] == sum(s.tn_count for s in per_file)
    # The window spanning the probation boundary ([10, 30], probation 25) still counts.
    assert null_score(files, cost) == -2.0 * 4


# ---------------------------------------------------------------- every detector, stored scores


@pytest.mark.parametrize("detector", sorted(NORMALIZED_31_FILES))
def test_stored_per_file_scores_normalize_to_reference(
    detector: str,
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    for profile in PROFILES:
        got = _stored_normalized(stored_tables, numenta_files, detector, profile, profiles[profile])
        assert got == pytest.approx(NORMALIZED_31_FILES[detector][profile], abs=5e-3), profile


@pytest.mark.parametrize("detector", sorted(ANCHORS_STANDARD_31))
def test_architecture_anchors_reproduced(
    detector: str,
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    got = _stored_normalized(
        stored_tables, numenta_files, detector, "standard", profiles["standard"]
    )
    assert round(got, 1) == ANCHORS_STANDARD_31[detector]


@pytest.mark.parametrize("detector", sorted(ANCHORS_NEEDING_RAW_OUTPUTS))
def test_anchors_needing_raw_outputs_bound_the_stored_threshold_score(
    detector: str,
    numenta_files: list[DetectorFile],
    profiles: dict[str, CostMatrix],
    stored_tables: dict[tuple[str, str], list[StoredFileScore]],
) -> None:
    """Not reproducible here (no raw outputs stored); only consistency is checked."""
    got = _stored_normalized(
        stored_tables, numenta_files, detector, "standard", profiles["standard"]
    )
    assert got <= ANCHORS_NEEDING_RAW_OUTPUTS[detector]


@pytest.mark.parametrize("detector", CONSISTENT_FULL_CORPUS)
def test_full_corpus_normalization_matches_final_results(
    detector: str,
    nab_dir: Path,
    profiles: dict[str, CostMatrix],
    thresholds: dict[str, dict[str, nab.StoredThreshold]],
) -> None:
    final = json.loads((nab_dir / "results" / "final_results.json").read_text())
    for profile in PROFILES:
        cost = profiles[profile]
        got = normalized_score(
            thresholds[detector][profile].raw_score,
            -cost.fn_weight * N_FULL_CORPUS_WINDOWS,
            perfect_score(N_FULL_CORPUS_WINDOWS, cost),
        )
        assert got == pytest.approx(final[detector][profile], abs=1e-9), profile


# ---------------------------------------------------------------- windows and probation


def test_probation_rows_follow_nab() -> None:
    assert nab.probation_rows(4032) == 604
    assert nab.probation_rows(1127) == 169
    assert nab.probation_rows(5000) == 750
    assert nab.probation_rows(22695) == 750


def test_window_limits_must_occur_exactly_once() -> None:
    ts = nab_windows.parse_timestamps_ns(
        ["2020-01-01 00:00:00", "2020-01-01 00:05:00", "2020-01-01 00:05:00", "2020-01-01 00:10:00"]
    )
    spans = nab.window_row_spans(ts, [("2020-01-01 00:00:00.000000", "2020-01-01 00:10:00")])
    assert spans.tolist() == [[0, 3]]
    with pytest.raises(ValueError, match="exactly one"):
        nab.window_row_spans(ts, [("2020-01-01 00:05:00", "2020-01-01 00:10:00")])
    with pytest.raises(ValueError, match="0 times"):
        nab.window_row_spans(ts, [("2020-01-01 00:01:00", "2020-01-01 00:10:00")])
