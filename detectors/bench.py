"""Throughput of our detectors against River's HalfSpaceTrees, on the same data, in one run.

Figures are *device-samples per second*: one device's value at one instant, scored and
learned. Our detectors take a whole fleet instant per call (``n_series`` devices); River
scores one sample per call, with one ``HalfSpaceTrees`` model per device (a fleet needs a
model per device), timed on the first ``river_series`` devices of the same data and
extrapolated per sample. River is optional (``pip install river``); without it the River
entry says so and there is no ratio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from accelpilot.detectors.registry import DEFAULT_DETECTOR, NAB_DETECTOR, make_detector


def fleet_data(n_series: int, n_steps: int, seed: int = 0) -> np.ndarray:
    """``(n_steps, n_series)`` values in [0, 1]: daily sine, noise and a few spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n_series)[None, :]
    v = 0.5 + 0.2 * np.sin(2 * np.pi * t / 288 + phase) + rng.normal(0, 0.03, (n_steps, n_series))
    spikes = rng.random((n_steps, n_series)) < 1e-3
    return np.clip(np.where(spikes, v + 0.3, v), 0.0, 1.0)


def time_ours(name: str, data: np.ndarray, **kwargs: Any) -> dict[str, float]:
    n_steps, n_series = data.shape
    det = make_detector(name, n_series, **kwargs)
    ts0 = 1_700_000_000 * 10**9
    det.update_score(data[0], ts0)  # first call sizes state; not timed
    start = time.perf_counter()
    for k in range(1, n_steps):
        det.update_score(data[k], ts0 + k * 60 * 10**9)
    seconds = time.perf_counter() - start
    samples = (n_steps - 1) * n_series
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def time_river(data: np.ndarray, n_series: int) -> dict[str, Any]:
    try:
        from river import anomaly
    except ImportError:
        return {"available": False, "why": "river is not installed (pip install river)"}
    sub = data[:, :n_series]
    models = [anomaly.HalfSpaceTrees(seed=i) for i in range(n_series)]
    start = time.perf_counter()
    for k in range(sub.shape[0]):
        row = sub[k]
        for i, model in enumerate(models):
            x = {"value": float(row[i])}
            model.score_one(x)
            model.learn_one(x)
    seconds = time.perf_counter() - start
    samples = sub.size
    return {
        "available": True,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }


def bench_detectors(
    n_series: int = 10_000,
    n_steps: int = 50,
    detectors: Sequence[str] = ("robust", "ensemble", "covariance", "gaps"),
    river_series: int = 20,
    river_steps: int = 250,
    nab_series: int = 1000,
    nab_steps: int = 1500,
) -> dict[str, Any]:
    """Device-samples/s of our detectors and River's HalfSpaceTrees, with ratios.

    The NAB detector (``NAB_DETECTOR``) learns for a probation period (600 samples when no
    file length is given) before it scores, so it is timed on its own longer, narrower
    stream (``nab_series`` x ``nab_steps``), probation included; ``nab_steps=0`` skips it.
    """
    data = fleet_data(n_series, max(n_steps, river_steps))
    ours = {name: time_ours(name, data[:n_steps]) for name in detectors}
    if nab_steps > 0:
        ours[NAB_DETECTOR] = time_ours(NAB_DETECTOR, fleet_data(nab_series, nab_steps, seed=1))
    river = time_river(data[:river_steps], river_series)
    result: dict[str, Any] = {
        "unit": "device-samples per second (score + learn)",
        "fleet": {"n_series": n_series, "n_steps": n_steps},
        "nab_detector_stream": {"n_series": nab_series, "n_steps": nab_steps},
        "default_detector": DEFAULT_DETECTOR,
        "nab_detector": NAB_DETECTOR,
        "ours": ours,
        "river_half_space_trees": river,
    }
    if river.get("available"):
        result["ratio_vs_river"] = {
            name: r["samples_per_s"] / river["samples_per_s"] for name, r in ours.items()
        }
    return result


if __name__ == "__main__":  # pragma: no cover - manual use: python -m accelpilot.detectors.bench
    import json

    print(json.dumps(bench_detectors(), indent=2))
