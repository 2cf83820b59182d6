"""The stream worker scores a batch's slots only (``_Detectors.score_slots``): for every
series-independent detector, the same scores and the same learned numbers as a call over every
slot of the worker with the others absent (what it did before)."""

from __future__ import annotations

import numpy as np
import pytest

from accelpilot.detectors.registry import detector_names, make_detector
from accelpilot.streams.alerting import DetectorSpec, _Detectors, _per_slot_arrays

CAPACITY = 64


def _independent() -> list[str]:
    return [
        name
        for name in detector_names()
        if getattr(make_detector(name, 4), "series_independent", False)
    ]


@pytest.mark.parametrize("name", _independent())
def test_scoring_some_slots_is_scoring_all_with_the_rest_absent(name: str) -> None:
    spec = DetectorSpec("power_w", name)
    rows, every = _Detectors([spec], CAPACITY), _Detectors([spec], CAPACITY)
    rng = np.random.default_rng(7)
    level = rng.uniform(100, 400, CAPACITY)
    t_ns = 1_700_000_000 * 10**9
    for tick in range(120):
        t_ns += 10**9
        slots = np.sort(rng.choice(CAPACITY, size=int(rng.integers(1, 20)), replace=False))
        values = level[slots] * (1 + 0.02 * rng.standard_normal(len(slots)))
        if tick % 17 == 5:
            values[0] *= 3.0  # a spike now and then
        values[rng.random(len(slots)) < 0.1] = np.nan  # a metric not reported
        present = rng.random(len(slots)) < 0.95
        got = rows.score_slots(0, slots, values, t_ns, present)
        full = np.full(CAPACITY, np.nan)
        full[slots] = values
        mask = np.zeros(CAPACITY, bool)
        mask[slots] = present
        want = every.dets[0].update_score(full, t_ns, mask)[slots]
        np.testing.assert_array_equal(got, want, err_msg=f"tick {tick}")
    a = _per_slot_arrays(rows.dets[0], CAPACITY, "")
    b = _per_slot_arrays(every.dets[0], CAPACITY, "")
    assert a.keys() == b.keys() and a
    for path in a:
        np.testing.assert_array_equal(getattr(*a[path]), getattr(*b[path]), err_msg=path)


def test_novelty_previous_period_path_on_slots() -> None:
    """The same with novelty's previous-period comparison running (periods found, a missing
    peak): even slots report on even ticks, odd slots on odd ones."""
    kwargs = {"default_probation": 100, "window": 8, "blocks": 4}
    spec = DetectorSpec("power_w", "novelty", kwargs)
    rows, every = _Detectors([spec], CAPACITY), _Detectors([spec], CAPACITY)
    rng = np.random.default_rng(3)
    level = rng.uniform(100, 400, CAPACITY)
    t_ns = 1_700_000_000 * 10**9
    for tick in range(400):
        t_ns += 10**9
        slots = np.arange(tick % 2, CAPACITY, 2)
        peak = (tick % 40) < 20 and not (320 <= tick < 340)  # the 9th peak is missing
        values = level[slots] * (1.5 if peak else 1.0) * (1 + 0.01 * rng.standard_normal(32))
        present = np.ones(len(slots), bool)
        got = rows.score_slots(0, slots, values, t_ns, present)
        full = np.full(CAPACITY, np.nan)
        full[slots] = values
        mask = np.zeros(CAPACITY, bool)
        mask[slots] = True
        want = every.dets[0].update_score(full, t_ns, mask)[slots]
        np.testing.assert_array_equal(got, want, err_msg=f"tick {tick}")
    det = rows.dets[0]
    # Every slot found its rhythm: 20 samples, or its multiple 40 where noise puts the
    # autocorrelation's highest peak there (both are periods of the series).
    assert np.isin(det.period, (20, 40)).all()  # type: ignore[attr-defined]
    assert (det.season_novelty > 1).any()  # type: ignore[attr-defined]  # the missing peak
    a = _per_slot_arrays(det, CAPACITY, "")
    b = _per_slot_arrays(every.dets[0], CAPACITY, "")
    for path in a:
        np.testing.assert_array_equal(getattr(*a[path]), getattr(*b[path]), err_msg=path)
