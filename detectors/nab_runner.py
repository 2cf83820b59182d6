"""Run detectors over timestamp,value CSV files and NAB corpora, and score them with NAB.

* :func:`score_csv`: one ``timestamp,value`` file -> ``timestamp,value,anomaly_score``.
* :func:`run_nab`: every ``<category>/*.csv`` under a data folder (any category name) ->
  ``<out>/<category>/<NAME>_<file>.csv``, as NAB's results layout.
* :func:`evaluate_nab`: detector name -> NAB normalized score per profile, one threshold
  optimized over the files (:func:`accelpilot.detectors.nab.benchmark`), no files written.

Every file is scored by a fresh detector of its own (one series), so a file's scores never
depend on another file. Detectors whose series are independent (``series_independent``)
are run over many files at once as one batch, with identical results, only faster.
Detectors that declare ``takes_file_range`` also get each file's min, max and length, as
NAB's own runner gives every detector (``inputMin`` / ``inputMax``; docs/detectors.md).
The NAB functions default to ``NAB_DETECTOR``, the CSV functions to ``DEFAULT_DETECTOR``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from accelpilot.detectors import nab
from accelpilot.detectors.base import FloatArray, IntArray
from accelpilot.detectors.registry import DEFAULT_DETECTOR, NAB_DETECTOR, make_detector

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True, slots=True)
class Series:
    """One ``timestamp,value`` file: the text cells (written back as read) and numbers."""

    timestamps: list[str]
    values_text: list[str]
    ts_ns: IntArray
    values: FloatArray


def read_series(path: Path) -> Series:
    """Read a headed ``timestamp,value`` CSV; empty or unparsable values become NaN."""
    columns = nab.corpus.read_csv_columns(path)
    if "timestamp" not in columns or "value" not in columns:
        raise ValueError(f"{path}: need columns timestamp,value; got {sorted(columns)}")
    text = columns["value"]
    values = np.array([_to_float(x) for x in text], dtype=np.float64)
    ts = nab.windows.parse_timestamps_ns(columns["timestamp"])
    return Series(columns["timestamp"], text, ts, values)


def _to_float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def score_series(
    series: Sequence[Series], detector_name: str = DEFAULT_DETECTOR, **kwargs: Any
) -> list[FloatArray]:
    """Anomaly scores for each series, each as if scored alone by a fresh detector."""
    probe = make_detector(detector_name, 1, **kwargs)
    takes_range = getattr(probe, "takes_file_range", False)
    if getattr(probe, "series_independent", False) and len(series) > 1:
        if takes_range:
            kwargs = {**file_range_kwargs(series), **kwargs}
        return _score_batched(series, detector_name, **kwargs)
    out = []
    for s in series:
        extra = file_range_kwargs([s]) if takes_range else {}
        det = make_detector(detector_name, 1, **{**extra, **kwargs})
        scores = np.empty(len(s.values))
        for t in range(len(s.values)):
            scores[t] = det.update_score(s.values[t : t + 1], s.ts_ns[t])[0]
        out.append(scores)
    return out


def file_range_kwargs(series: Sequence[Series]) -> dict[str, Any]:
    """NAB's protocol for detectors that take it: each file's min, max and length.

    NAB's runner gives every detector ``inputMin`` / ``inputMax`` = the file's min and max
    (``nab/detectors/base.py``), and ARTime the file's length; detectors that declare
    ``takes_file_range`` get the same here, per series.
    """
    lo = [float(np.nanmin(s.values)) if np.isfinite(s.values).any() else 0.0 for s in series]
    hi = [float(np.nanmax(s.values)) if np.isfinite(s.values).any() else 0.0 for s in series]
    return {
        "value_min": np.array(lo),
        "value_max": np.array(hi),
        "n_samples": np.array([len(s.values) for s in series], np.int64),
    }


def _score_batched(series: Sequence[Series], detector_name: str, **kwargs: Any) -> list[FloatArray]:
    """All series in one detector, padded with absent samples after each one ends."""
    n = max(len(s.values) for s in series)
    values = np.full((len(series), n), np.nan)
    ts = np.zeros((len(series), n), np.int64)
    for i, s in enumerate(series):
        m = len(s.values)
        values[i, :m] = s.values
        ts[i, :m] = s.ts_ns
        ts[i, m:] = s.ts_ns[-1] if m else 0
    present = np.arange(n)[None, :] < np.array([len(s.values) for s in series])[:, None]
    det = make_detector(detector_name, len(series), **kwargs)
    scores = np.empty((len(series), n))
    for t in range(n):
        scores[:, t] = det.update_score(values[:, t], ts[:, t], present[:, t])
    return [scores[i, : len(s.values)] for i, s in enumerate(series)]


def write_results(path: Path, series: Series, scores: FloatArray) -> None:
    """Write ``timestamp,value,anomaly_score`` (timestamps and values as read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score"])
        for ts, v, s in zip(series.timestamps, series.values_text, scores, strict=True):
            w.writerow([ts, v, repr(float(s))])


def score_csv(in_path: Path, out_path: Path, detector_name: str = DEFAULT_DETECTOR) -> None:
    """Score one ``timestamp,value`` file into ``timestamp,value,anomaly_score``."""
    series = read_series(Path(in_path))
    write_results(Path(out_path), series, score_series([series], detector_name)[0])


def run_nab(
    data_dir: Path,
    out_dir: Path,
    detector_name: str = NAB_DETECTOR,
    progress: TextIO | None = sys.stderr,
) -> list[Path]:
    """Score every ``<category>/*.csv`` under ``data_dir`` into NAB's results layout.

    Returns the written paths ``<out>/<category>/<NAME>_<file>.csv``, sorted.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    relative = nab.list_data_files(data_dir)
    series = [read_series(data_dir / r) for r in relative]
    if progress:
        print(f"{detector_name}: scoring {len(relative)} files under {data_dir}", file=progress)
    scores = score_series(series, detector_name)
    written = []
    for r, s, sc in zip(relative, series, scores, strict=True):
        path = nab.corpus.results_path(out_dir, "", r)  # <out>/<category>/_<file>
        path = path.with_name(f"{detector_name}_{Path(r).name}")
        write_results(path, s, sc)
        written.append(path)
        if progress:
            print(f"  {r} -> {path}", file=progress)
    return sorted(written)


def nab_scores(
    data_dir: Path,
    scores: Mapping[str, FloatArray],
    relative_paths: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """NAB normalized score, threshold and raw score per profile for given anomaly scores."""
    data_dir = Path(data_dir)
    windows = nab.load_windows(data_dir / "labels" / "combined_windows.json")
    profiles = nab.load_profiles(data_dir / "config" / "profiles.json")
    paths = list(scores) if relative_paths is None else list(relative_paths)
    files = []
    for r in paths:
        ts = nab.corpus.load_data_timestamps(data_dir, r)
        files.append(nab.prepare_file(r, ts, np.asarray(scores[r], np.float64), windows[r]))
    n_windows = sum(len(windows[r]) for r in paths)
    out = {}
    for p in PROFILES:
        b = nab.benchmark(files, profiles[p], n_windows)
        out[p] = {"score": b.normalized_score, "threshold": b.threshold, "raw": b.raw_score}
    return out


def detector_scores(
    data_dir: Path,
    detector_name: str = NAB_DETECTOR,
    relative_paths: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, FloatArray]:
    """Run a detector over NAB data files: relative path -> anomaly scores."""
    data_dir = Path(data_dir)
    paths = nab.list_data_files(data_dir) if relative_paths is None else list(relative_paths)
    series = [read_series(data_dir / r) for r in paths]
    return dict(zip(paths, score_series(series, detector_name, **kwargs), strict=True))


def evaluate_nab(
    data_dir: Path,
    detector_name: str = NAB_DETECTOR,
    relative_paths: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """NAB normalized score per profile (one threshold optimized over the files)."""
    scores = detector_scores(data_dir, detector_name, relative_paths, **kwargs)
    return {p: v["score"] for p, v in nab_scores(data_dir, scores).items()}
