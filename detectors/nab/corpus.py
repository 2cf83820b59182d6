"""Read an NAB corpus from disk: data files, detector results, profiles and stored scores.

Layout (as numenta/NAB):

* ``<data>/<category>/<name>.csv`` with header ``timestamp,value``;
* ``<results>/<detector>/<category>/<detector>_<name>.csv`` with columns
  ``timestamp,value,anomaly_score[,raw_score,label,S(t)_<profile>...]``;
* ``<results>/per_file_scores/<detector>_<profile>_scores.csv`` (NAB's scoring output),
  ``config/profiles.json``, ``config/thresholds.json``, ``labels/combined_windows.json``.

All paths are parameters; nothing here knows where a corpus lives.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accelpilot.detectors.nab.scoring import (
    CostMatrix,
    DetectorFile,
    FloatArray,
    IntArray,
    row_layout,
)
from accelpilot.detectors.nab.windows import (
    WindowLimits,
    parse_timestamps_ns,
    probation_rows,
    window_row_spans,
)

#: Folders of an NAB checkout that hold no data categories.
NON_DATA_FOLDERS = frozenset({"config", "labels", "results"})


def list_data_files(data_dir: Path) -> list[str]:
    """Relative paths (``<category>/<name>.csv``, sorted) of every data file under ``data_dir``."""
    return sorted(
        p.relative_to(data_dir).as_posix()
        for p in data_dir.glob("*/*.csv")
        if p.parent.name not in NON_DATA_FOLDERS
    )


def read_csv_columns(path: Path) -> dict[str, list[str]]:
    """Read a headed CSV into ``{column: [cell, ...]}`` (cells as text)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        cells = list(zip(*reader, strict=True))
    if not cells:
        return {name: [] for name in header}
    return {name: list(column) for name, column in zip(header, cells, strict=True)}


def load_data_timestamps(data_dir: Path, relative_path: str) -> IntArray:
    """Timestamps (int64 ns since the epoch) of one data file."""
    return parse_timestamps_ns(read_csv_columns(data_dir / relative_path)["timestamp"])


def results_path(results_dir: Path, detector: str, relative_path: str) -> Path:
    """``<results>/<detector>/<category>/<detector>_<name>.csv`` for a data file."""
    data_file = Path(relative_path)
    return results_dir / detector / data_file.parent / f"{detector}_{data_file.name}"


@dataclass(frozen=True, slots=True)
class DetectorResults:
    """One detector results file.

    Attributes:
        timestamps_ns: row timestamps, int64 nanoseconds since the epoch.
        anomaly_scores: the ``anomaly_score`` column.
        numeric_columns: every other column except ``timestamp``, as float64
            (e.g. ``value``, ``label``, NAB's per-row ``S(t)_<profile>``).
    """

    relative_path: str
    timestamps_ns: IntArray
    anomaly_scores: FloatArray
    numeric_columns: dict[str, FloatArray]


def load_detector_results(results_dir: Path, detector: str, relative_path: str) -> DetectorResults:
    """Read ``<results>/<detector>/<category>/<detector>_<name>.csv``."""
    columns = read_csv_columns(results_path(results_dir, detector, relative_path))
    numeric = {
        name: np.asarray([float(x) for x in cells], dtype=np.float64)
        for name, cells in columns.items()
        if name != "timestamp"
    }
    return DetectorResults(
        relative_path=relative_path,
        timestamps_ns=parse_timestamps_ns(columns["timestamp"]),
        anomaly_scores=numeric.pop("anomaly_score"),
        numeric_columns=numeric,
    )


def prepare_file(
    relative_path: str,
    timestamps_ns: IntArray,
    anomaly_scores: FloatArray,
    windows: Sequence[WindowLimits],
) -> DetectorFile:
    """Attach window and probation layout to one file's anomaly scores."""
    spans = window_row_spans(timestamps_ns, windows)
    layout = row_layout(len(timestamps_ns), spans, probation_rows(len(timestamps_ns)))
    return DetectorFile(relative_path, np.asarray(anomaly_scores, np.float64), layout)


def load_detector_corpus(
    data_dir: Path,
    results_dir: Path,
    detector: str,
    windows: Mapping[str, Sequence[WindowLimits]],
    relative_paths: Iterable[str] | None = None,
) -> list[DetectorFile]:
    """A detector's results on every data file, checked against the data timestamps.

    Args:
        relative_paths: the files to load; default every data file under ``data_dir``.

    Raises:
        ValueError: a results file's timestamps differ from its data file's, or a data
            file has no entry in ``windows``.
    """
    files = []
    paths = list_data_files(data_dir) if relative_paths is None else list(relative_paths)
    for relative_path in paths:
        if relative_path not in windows:
            raise ValueError(f"{relative_path} has no entry in the label windows")
        data_ts = load_data_timestamps(data_dir, relative_path)
        results = load_detector_results(results_dir, detector, relative_path)
        if not np.array_equal(data_ts, results.timestamps_ns):
            raise ValueError(f"{detector} results for {relative_path} do not match its rows")
        files.append(
            prepare_file(relative_path, data_ts, results.anomaly_scores, windows[relative_path])
        )
    return files


def load_profiles(profiles_path: Path) -> dict[str, CostMatrix]:
    """NAB's ``config/profiles.json``: profile name -> cost matrix."""
    with profiles_path.open(encoding="utf-8") as f:
        raw = json.load(f)
    return {name: CostMatrix.from_nab(body["CostMatrix"]) for name, body in raw.items()}


@dataclass(frozen=True, slots=True)
class StoredThreshold:
    """One entry of NAB's ``config/thresholds.json`` (optimized on NAB's full corpus)."""

    threshold: float
    raw_score: float


def load_thresholds(thresholds_path: Path) -> dict[str, dict[str, StoredThreshold]]:
    """NAB's ``config/thresholds.json``: detector -> profile -> threshold and raw score."""
    with thresholds_path.open(encoding="utf-8") as f:
        raw = json.load(f)
    return {
        detector: {
            profile: StoredThreshold(float(v["threshold"]), float(v["score"]))
            for profile, v in profiles.items()
        }
        for detector, profiles in raw.items()
    }


@dataclass(frozen=True, slots=True)
class StoredFileScore:
    """One file's row of NAB's ``<detector>_<profile>_scores.csv``.

    ``total_count`` is the file length in tables from NAB's older per-file scorer and the
    number of scored (post-probation) rows in tables from its sweeper.
    """

    detector: str
    profile: str
    relative_path: str
    threshold: float
    raw_score: float
    tp_count: int
    tn_count: int
    fp_count: int
    fn_count: int
    total_count: int


def load_stored_file_scores(scores_path: Path) -> list[StoredFileScore]:
    """Read one ``<detector>_<profile>_scores.csv``, skipping any ``Totals`` row."""
    with scores_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        StoredFileScore(
            detector=r["Detector"],
            profile=r["Profile"],
            relative_path=r["File"],
            threshold=float(r["Threshold"]),
            raw_score=float(r["Score"]),
            tp_count=int(r["TP"]),
            tn_count=int(r["TN"]),
            fp_count=int(r["FP"]),
            fn_count=int(r["FN"]),
            total_count=int(r["Total_Count"]),
        )
        for r in rows
        if r["Detector"] != "Totals" and r["File"]
    ]
