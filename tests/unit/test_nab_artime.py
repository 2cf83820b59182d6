"""The numpy ARTime port reproduces NAB's stored ARTime results on the shared corpus.

NAB stores, per file, ARTime's detections at its optimized threshold (TP/FP row counts in
``results/per_file_scores/ARTime_standard_scores.csv``). Run with NAB's protocol (each
file's min/max and length), the port must detect exactly the same rows' counts on every
file, and reach ARTime's normalized scores with one threshold optimized over the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelpilot.detectors import nab
from accelpilot.detectors.artime import haar, pair_similarity
from accelpilot.detectors.nab_runner import detector_scores, nab_scores

NAB_DIR = Path("/work/shared/data/nab")
STORED = NAB_DIR / "results" / "per_file_scores" / "ARTime_standard_scores.csv"
needs_corpus = pytest.mark.skipif(not STORED.exists(), reason="NAB corpus absent")


def test_haar_is_orthonormal_with_wavelets_jl_order_and_sign() -> None:
    x = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 1.0, 0.0, 4.0])
    y = haar(x)
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x))
    assert np.isclose(y[0], x.sum() / np.sqrt(8))  # coarsest approximation first
    np.testing.assert_allclose(y[4:], (x[1::2] - x[0::2]) / np.sqrt(2))  # finest details last


def test_pair_similarity_is_cosine_with_zero_vector_rule() -> None:
    f = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # columns: e1, 2*e1, zero
    sim = pair_similarity(f)
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == pytest.approx(0.0)  # 1 - |e1|
    assert sim[1, 2] == pytest.approx(-1.0)  # 1 - |2 e1|
    np.testing.assert_array_equal(np.diag(sim), 1.0)


@needs_corpus
def test_port_matches_artime_per_file_and_overall() -> None:
    scores = detector_scores(NAB_DIR, "artime")
    windows = nab.load_windows(NAB_DIR / "labels" / "combined_windows.json")
    cost = nab.load_profiles(NAB_DIR / "config" / "profiles.json")["standard"]
    stored = nab.load_stored_file_scores(STORED)
    assert len(stored) == len(scores) == 31
    for row in stored:
        r = row.relative_path
        ts = nab.corpus.load_data_timestamps(NAB_DIR, r)
        f = nab.prepare_file(r, ts, scores[r], windows[r])
        got = nab.score_file(f.anomaly_scores, f.layout, cost, row.threshold)
        assert (got.tp_count, got.fp_count) == (row.tp_count, row.fp_count), r
        assert got.raw_score == pytest.approx(row.raw_score, abs=1e-9), r
    overall = {p: round(v["score"], 2) for p, v in nab_scores(NAB_DIR, scores).items()}
    assert overall == {"standard": 73.55, "reward_low_FP_rate": 65.59, "reward_low_FN_rate": 78.59}
