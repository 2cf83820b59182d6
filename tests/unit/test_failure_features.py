"""Streaming failure features: hand-computed windows, peers, gaps, onsets and state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from accelpilot.detectors.failure_features import (
    FEATURES,
    LONG_S,
    MEDIUM_S,
    SHORT_S,
    FailureFeatures,
)

F = {name: i for i, name in enumerate(FEATURES)}


def step(
    ff: FailureFeatures,
    *,
    temp: list[float],
    groups: list[int] | None = None,
    reporting: list[bool] | None = None,
    mask: list[int] | None = None,
    deltas: list[list[float]] | None = None,
    xid_weight: list[float] | None = None,
    xid_count: list[float] | None = None,
    n_int: int = 1,
    dt_s: float = 1.0,
) -> np.ndarray:
    n = len(temp)
    ff.update_rows(
        np.arange(n),
        np.array(groups or [0] * n, np.int64),
        np.array(reporting or [True] * n),
        np.array(temp, float),
        np.array(mask or [0] * n, np.int64),
        np.array(deltas or [[0.0] * 4] * n, float),
        np.array(xid_weight or [0.0] * n, float),
        np.array(xid_count or [0.0] * n, float),
        np.full(n, n_int, np.int64),
        np.full(n, dt_s),
    )
    return ff.features()


def test_fresh_devices_have_all_zero_features() -> None:
    ff = FailureFeatures(3)
    assert ff.features().shape == (3, len(FEATURES))
    assert not ff.features().any()


def test_ecc_rate_windows_and_trend_by_hand() -> None:
    ff = FailureFeatures(2)
    # Device 1: 60 corrected errors in a 1 s step = 3600 per minute.
    x = step(ff, temp=[60.0, 60.0], deltas=[[0, 0, 0, 0], [60, 0, 0, 0]])
    short = (1 - math.exp(-1 / SHORT_S)) * 3600.0
    long_ = (1 - math.exp(-1 / LONG_S)) * 3600.0
    assert x[1, F["ecc_rate_5m"]] == pytest.approx(math.log1p(short))
    assert x[1, F["ecc_rate_60m"]] == pytest.approx(math.log1p(long_))
    assert x[1, F["ecc_trend"]] == pytest.approx(math.log1p(short) - math.log1p(long_))
    assert x[1, F["ecc_active_60m"]] == pytest.approx(1 - math.exp(-1 / LONG_S))
    assert not x[0].any()
    # A quiet 60 s step: the short window decays faster than the long one (trend falls).
    x2 = step(ff, temp=[60.0, 60.0], dt_s=60.0)
    assert x2[1, F["ecc_rate_5m"]] == pytest.approx(math.log1p(short * math.exp(-60 / SHORT_S)))
    assert x2[1, F["ecc_trend"]] < x[1, F["ecc_trend"]]


def test_counts_of_uncorrected_retired_remapped_and_xids() -> None:
    ff = FailureFeatures(1)
    step(ff, temp=[60.0], deltas=[[0, 2, 1, 3]], xid_weight=[0.6], xid_count=[1.0])
    x = step(ff, temp=[60.0], dt_s=LONG_S)  # one time constant later
    e = math.exp(-1.0)
    assert x[0, F["ecc_uncorr_60m"]] == pytest.approx(math.log1p(2 * e))
    assert x[0, F["retired_60m"]] == pytest.approx(math.log1p(1 * e))
    assert x[0, F["remapped_60m"]] == pytest.approx(math.log1p(3 * e))
    assert x[0, F["xid_severe_60m"]] == pytest.approx(0.6 * e)
    assert x[0, F["xid_count_60m"]] == pytest.approx(math.log1p(e))
    # A more severe XID replaces the decayed one; a milder one does not.
    x = step(ff, temp=[60.0], xid_weight=[0.1])
    assert x[0, F["xid_severe_60m"]] == pytest.approx(0.6 * e * math.exp(-1 / LONG_S))


def test_temperature_level_peers_and_slope() -> None:
    ff = FailureFeatures(4, temp_limit_c=90.0)
    # Host 0: three devices, one 30 degC hotter than its peers; host 1: a lone device.
    x = step(ff, temp=[60.0, 60.0, 90.0, 95.0], groups=[0, 0, 0, 1])
    a_s, a_m = math.exp(-1 / SHORT_S), math.exp(-1 / MEDIUM_S)
    assert x[2, F["temp_peer_5m"]] == pytest.approx((1 - a_s) * 3.0)
    assert x[0, F["temp_peer_5m"]] == pytest.approx((1 - a_s) * (60 - 75) / 10)
    assert x[3, F["temp_peer_5m"]] == 0.0  # no peer
    assert x[2, F["temp_hot_30m"]] == pytest.approx(1 - a_m)  # at the limit: level 1
    assert x[0, F["temp_hot_30m"]] == 0.0  # 20 degC below it
    assert x[2, F["temp_slope_5m"]] == 0.0  # no previous reading yet
    # +2 degC in 10 s = 12 degC/min = 1.2 (per 10 degC).
    x = step(ff, temp=[60.0, 60.0, 92.0, 95.0], groups=[0, 0, 0, 1], dt_s=10.0)
    assert x[2, F["temp_slope_5m"]] == pytest.approx((1 - math.exp(-10 / SHORT_S)) * 1.2)


def test_throttle_bits_and_onsets() -> None:
    ff = FailureFeatures(2)
    a_s = math.exp(-1 / SHORT_S)
    x = step(ff, temp=[60.0, 60.0], mask=[0x4, 0x40])  # SW power cap is not a HW reason
    assert x[0, F["throttle_hw_5m"]] == 0.0
    assert x[1, F["throttle_hw_5m"]] == pytest.approx(1 - a_s)
    # Abnormal pattern for device 1: on, on, off, on -> 2 onsets.
    for m in (0x40, 0, 0x80):
        x = step(ff, temp=[60.0, 60.0], mask=[0, m])
    a_l = math.exp(-1 / LONG_S)
    assert x[1, F["onsets_60m"]] == pytest.approx(math.log1p(a_l**3 + 1))
    assert x[0, F["onsets_60m"]] == 0.0
    # Hot (>= limit - 5) counts as abnormal too.
    x = step(ff, temp=[86.0, 60.0])
    assert x[0, F["onsets_60m"]] == pytest.approx(math.log1p(1.0))


def test_gaps_and_silence_keep_the_other_windows() -> None:
    ff = FailureFeatures(2)
    step(ff, temp=[60.0, 60.0], mask=[0, 0x40])
    before = ff.features()[1].copy()
    for _ in range(3):
        x = step(ff, temp=[60.0, np.nan], reporting=[True, False])
    assert x[1, F["silent_now"]] == pytest.approx(math.log1p(3))
    a_l = math.exp(-1 / LONG_S)
    assert x[1, F["gap_60m"]] == pytest.approx(1 - a_l**3)
    assert x[1, F["throttle_hw_5m"]] == before[F["throttle_hw_5m"]]  # not forgotten
    # The host missed 4 of 5 intervals: a reporting device's gap fraction is 4/5.
    x = step(ff, temp=[60.0, 60.0], n_int=5, dt_s=5.0)
    assert x[1, F["silent_now"]] == 0.0
    assert x[0, F["gap_60m"]] == pytest.approx((1 - math.exp(-5 / LONG_S)) * 0.8)


def test_state_round_trip_mid_stream() -> None:
    rng = np.random.default_rng(0)
    a = FailureFeatures(3)
    for _ in range(20):
        step(a, temp=list(rng.uniform(50, 95, 3)), deltas=rng.poisson(2, (3, 4)).tolist())
    b = FailureFeatures.from_state(a.get_state())
    for _ in range(20):
        kw = {"temp": list(rng.uniform(50, 95, 3)), "mask": [0, 64, 8]}
        assert step(a, **kw).tolist() == step(b, **kw).tolist()  # type: ignore[arg-type]
