"""The NAB runner walks any <category>/*.csv, writes NAB's results layout, and evaluates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from accelpilot.detectors import nab
from accelpilot.detectors.nab_runner import (
    evaluate_nab,
    read_series,
    run_nab,
    score_csv,
    score_series,
)


def write_series(path: Path, values: np.ndarray, start: str = "2020-01-01") -> list[str]:
    ts = np.datetime64(f"{start}T00:00:00") + np.arange(len(values)) * np.timedelta64(5, "m")
    stamps = [str(t).replace("T", " ") for t in ts]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows(zip(stamps, [repr(float(v)) for v in values], strict=True))
    return stamps


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """A made-up NAB folder: a category no NAB release has, plus labels and profiles."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    windows = {}
    for name, spike_at in (("alpha.csv", 400), ("beta.csv", 300), ("quiet.csv", None)):
        values = 10 + np.sin(np.arange(600) / 20) + rng.normal(0, 0.1, 600)
        rel = f"neverSeenCategory/{name}"
        if spike_at is not None:
            values[spike_at] += 8
        stamps = write_series(data / rel, values)
        windows[rel] = [] if spike_at is None else [[stamps[spike_at - 20], stamps[spike_at + 20]]]
    (data / "labels").mkdir()
    (data / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    (data / "config").mkdir()
    profile = {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0}
    profiles = {
        "standard": {"CostMatrix": profile},
        "reward_low_FP_rate": {"CostMatrix": {**profile, "fpWeight": 0.22}},
        "reward_low_FN_rate": {"CostMatrix": {**profile, "fnWeight": 2.0}},
    }
    (data / "config" / "profiles.json").write_text(json.dumps(profiles))
    return data


def test_run_nab_writes_results_layout_for_unseen_category(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "robust"  # NAB keeps <results>/<detector>/<category>/
    written = run_nab(corpus, out, "robust", progress=None)
    expected = [
        out / "neverSeenCategory" / f"robust_{n}" for n in ("alpha.csv", "beta.csv", "quiet.csv")
    ]
    assert written == expected
    for path in written:
        with path.open() as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["timestamp", "value", "anomaly_score"]
        assert len(rows) == 601
        scores = np.array([float(r[2]) for r in rows[1:]])
        assert ((scores >= 0) & (scores <= 1)).all()
    # The files load with the NAB scorer's own reader, rows matching the data.
    results = nab.load_detector_corpus(
        corpus, out.parent, "robust", nab.load_windows(corpus / "labels" / "combined_windows.json")
    )
    assert len(results) == 3


def test_score_csv_matches_run_nab_and_batching_changes_nothing(
    corpus: Path, tmp_path: Path
) -> None:
    src = corpus / "neverSeenCategory" / "alpha.csv"
    score_csv(src, tmp_path / "one.csv", "robust")
    run_nab(corpus, tmp_path / "all", "robust", progress=None)
    one = (tmp_path / "one.csv").read_text()
    assert one == (tmp_path / "all" / "neverSeenCategory" / "robust_alpha.csv").read_text()
    # Batched (many files in one detector) equals one detector per file.
    series = [read_series(p) for p in sorted((corpus / "neverSeenCategory").glob("*.csv"))]
    batched = score_series(series, "robust")
    for s, b in zip(series, batched, strict=True):
        np.testing.assert_array_equal(score_series([s], "robust")[0], b)


def test_score_csv_keeps_text_and_handles_blank_values(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("timestamp,value\n2020-01-01 00:00:00,1.50\n2020-01-01 00:01:00,\n")
    score_csv(src, tmp_path / "out.csv", "ensemble")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[1].startswith("2020-01-01 00:00:00,1.50,")
    assert lines[2].startswith("2020-01-01 00:01:00,,")


def test_evaluate_nab_scores_the_spikes(corpus: Path) -> None:
    scores = evaluate_nab(corpus, "robust")
    assert set(scores) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert scores["standard"] > 50.0  # both spikes found, few false alarms


def test_unknown_detector_is_refused(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown detector"):
        run_nab(corpus, tmp_path / "o", "nope", progress=None)
