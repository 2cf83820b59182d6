"""NAB ground-truth windows and the probationary period, as row indices.

NAB (numenta/NAB ``nab/labeler.py``, ``nab/sweeper.py``) labels each data file with
anomaly windows ``[start, end]`` given as timestamps that must occur exactly in the file.
Scoring works on row indices, so windows are turned into inclusive row spans here.

>>> probation_rows(4032)
604
>>> probation_rows(22695)
750
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: NAB's ``Runner.probationaryPercent``: the share of each file that is not scored.
PROBATION_FRACTION = 0.15
#: NAB caps the probationary period at ``probationPercent * 5000`` rows (750 rows at 15%).
PROBATION_CAP_BASE_ROWS = 5000

#: One window as stored in ``combined_windows.json``: (start, end) timestamp strings.
WindowLimits = tuple[str, str]


def probation_rows(n_rows: int, probation_fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of a file in which detections are ignored.

    ``min(floor(fraction * n_rows), fraction * 5000)``, as NAB's
    ``Sweeper._getProbationaryLength``; rows with index ``>= probation_rows`` are scored.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return int(
        min(
            math.floor(probation_fraction * n_rows),
            math.ceil(probation_fraction * PROBATION_CAP_BASE_ROWS),
        )
    )


def load_windows(labels_path: Path) -> dict[str, list[WindowLimits]]:
    """Read NAB's ``combined_windows.json``: relative data path -> list of (start, end).

    Keys are paths relative to the data folder, e.g. ``realKnownCause/nyc_taxi.csv``.
    """
    with labels_path.open(encoding="utf-8") as f:
        raw: dict[str, list[list[str]]] = json.load(f)
    windows: dict[str, list[WindowLimits]] = {}
    for relative_path, limits in raw.items():
        pairs: list[WindowLimits] = []
        for pair in limits:
            if len(pair) != 2:
                raise ValueError(f"{labels_path}: window {pair!r} of {relative_path} is not a pair")
            pairs.append((str(pair[0]), str(pair[1])))
        windows[relative_path] = pairs
    return windows


def count_windows(windows: Mapping[str, Sequence[WindowLimits]]) -> int:
    """All windows in a label set: NAB's ``tpCount`` used for the perfect score."""
    return sum(len(limits) for limits in windows.values())


def parse_timestamps_ns(texts: Sequence[str]) -> npt.NDArray[np.int64]:
    """Parse ``YYYY-MM-DD HH:MM:SS[.ffffff]`` strings to int64 nanoseconds since the epoch."""
    return np.asarray(texts, dtype="datetime64[ns]").astype(np.int64)


def window_row_spans(
    timestamps_ns: npt.NDArray[np.int64], windows: Sequence[WindowLimits]
) -> npt.NDArray[np.int64]:
    """Turn window timestamps into inclusive row spans, shape ``(n_windows, 2)``.

    As NAB's ``CorpusLabel.getWindows``, each limit must match exactly one timestamp of the
    file (NAB files are not always strictly increasing: some repeat or step back a
    timestamp, which is fine away from window limits); windows must be in row order and
    must not overlap (NAB's sweeper enters them in list order).

    Raises:
        ValueError: a limit does not occur exactly once, or windows are out of order or
            overlap.
    """
    spans = np.empty((len(windows), 2), dtype=np.int64)
    if not windows:
        return spans
    limits_ns = parse_timestamps_ns([t for pair in windows for t in pair])
    for k, (text, limit_ns) in enumerate(
        zip((t for pair in windows for t in pair), limits_ns, strict=True)
    ):
        matches = np.flatnonzero(timestamps_ns == limit_ns)
        if len(matches) != 1:
            raise ValueError(
                f"window limit {text!r} occurs {len(matches)} times in the file's timestamps; "
                "NAB requires exactly one"
            )
        spans.flat[k] = matches[0]
    if bool((spans[:, 1] < spans[:, 0]).any()) or bool((spans[1:, 0] <= spans[:-1, 1]).any()):
        raise ValueError(f"windows are out of order or overlap: {list(windows)!r}")
    return spans
