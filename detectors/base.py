"""The one batch API every detector implements.

A detector watches ``n_series`` series (devices, or device metrics) at once. Each call to
:meth:`Detector.update_score` hands it one instant: a value per series (or a metric vector
per series), the timestamps, and which series reported. It returns one anomaly score per
series in ``[0, 1]`` and then learns from the instant, so the score at time ``t`` depends only
on data up to ``t`` (strictly streaming).

* ``values``: float array ``(n_series,)`` or ``(n_series, n_features)``; NaN = missing.
* ``ts_ns``: int64 nanoseconds since the epoch, a scalar (one instant for every series) or
  an array ``(n_series,)``.
* ``present``: optional bool mask ``(n_series,)``; ``False`` means the series sent nothing
  this instant (its values are ignored and its score is that of a missing sample).

Scores are calibrated per detector: each is a tail probability turned into ``[0, 1]`` so a
fixed threshold means roughly the same false-alarm rate on any series. Deciding whether a
score is an alarm is a separate concern (:mod:`accelpilot.detectors.threshold`).

State is a ``bytes`` checkpoint (:meth:`Detector.get_state` / :meth:`Detector.from_state`)
so stream workers can save and restore it; it is pickled, so only restore checkpoints this
deployment wrote itself.
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Version tag inside every checkpoint; bump when a detector's state layout changes.
STATE_VERSION = 1


@runtime_checkable
class Detector(Protocol):
    """What a stream worker, the NAB runner and the ensemble rely on."""

    name: str
    n_series: int

    def update_score(
        self,
        values: npt.ArrayLike,
        ts_ns: int | npt.ArrayLike,
        present: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Score one instant for every series (``(n_series,)`` in [0, 1]), then learn it."""
        ...

    def get_state(self) -> bytes:
        """A checkpoint from which :meth:`from_state` rebuilds an identical detector."""
        ...

    @classmethod
    def from_state(cls, state: bytes) -> Self:
        """Rebuild a detector from :meth:`get_state`'s bytes."""
        ...


class BatchDetector:
    """Shared plumbing: input normalization and pickled state of ``__dict__``.

    Subclasses set ``name`` and implement :meth:`_update_score` on normalized inputs:
    ``values`` ``(n_series, n_features)`` float64 with NaN where missing, ``ts_ns``
    ``(n_series,)`` int64 and ``present`` ``(n_series,)`` bool (a series with every feature
    NaN counts as absent).
    """

    name: ClassVar[str] = "base"

    def __init__(self, n_series: int) -> None:
        if n_series < 1:
            raise ValueError(f"n_series must be >= 1, got {n_series}")
        self.n_series = int(n_series)

    def update_score(
        self,
        values: npt.ArrayLike,
        ts_ns: int | npt.ArrayLike,
        present: npt.ArrayLike | None = None,
    ) -> FloatArray:
        v, ts, mask = normalize_inputs(self.n_series, values, ts_ns, present)
        return self._update_score(v, ts, mask)

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        raise NotImplementedError

    def get_state(self) -> bytes:
        body = {"version": STATE_VERSION, "class": type(self).__qualname__, "dict": self.__dict__}
        return pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_state(cls, state: bytes) -> Self:
        body = pickle.loads(state)
        if body.get("version") != STATE_VERSION or body.get("class") != cls.__qualname__:
            raise ValueError(
                f"checkpoint is {body.get('class')} v{body.get('version')}, "
                f"expected {cls.__qualname__} v{STATE_VERSION}"
            )
        obj = cls.__new__(cls)
        obj.__dict__.update(body["dict"])
        return obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_series={self.n_series})"


def normalize_inputs(
    n_series: int,
    values: npt.ArrayLike,
    ts_ns: int | npt.ArrayLike,
    present: npt.ArrayLike | None,
) -> tuple[FloatArray, IntArray, BoolArray]:
    """Check shapes and return ``(values (n, f), ts_ns (n,), present (n,))``.

    >>> v, ts, p = normalize_inputs(2, [1.0, float("nan")], 5, None)
    >>> v.shape, ts.tolist(), p.tolist()
    ((2, 1), [5, 5], [True, False])
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != n_series:
        raise ValueError(f"values must be (n_series,) or (n_series, n_features); got {v.shape}")
    ts = np.broadcast_to(np.asarray(ts_ns, dtype=np.int64), (n_series,))
    mask = ~np.isnan(v).all(axis=1)
    if present is not None:
        p = np.asarray(present, dtype=bool)
        if p.shape != (n_series,):
            raise ValueError(f"present must be ({n_series},); got {p.shape}")
        mask &= p
    v = np.where(mask[:, None], v, np.nan)
    return v, ts, mask


def state_size_bytes(detector: Any) -> int:
    """Length of a detector's checkpoint (what the bounded-memory check measures)."""
    return len(detector.get_state())
