"""The fleet simulator implements shared/spec/fleet-scenarios.md exactly: hand-computed numbers for
every formula, the standby/wake timing, each fault, determinism per seed, config errors that name
the field, and every bundled scenario runs to completion."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelpilot.errors import ConfigError
from accelpilot.optimizer import physics
from accelpilot.optimizer.scenario import (
    Scenario,
    bundled_scenario_names,
    load_bundled_scenario,
    load_scenario,
    parse_scenario,
)
from accelpilot.optimizer.simulator import Controls, FleetSimulator
from accelpilot.optimizer.telemetry import (
    THROTTLE_HW_THERMAL_SLOWDOWN,
    THROTTLE_SW_POWER_CAP,
    ThermalModel,
)
from accelpilot.schemas.metrics import METRICS

# The spec's example device and phase: idle 70 W, TDP 700 W, util 0.95, beta 0.33, cap 400 W.
# D = 630, P_dem = 70 + 0.95 * 630 = 668.5, P = min(668.5, 400) = 400,
# R(400) = 1000 * 0.95 * (330 / 598.5) ** 0.33 = 780.5523478312215.
R_AT_400 = 780.5523478312215
# R(200) = 950 * (130 / 598.5) ** 0.33
R_AT_200 = 573.9760094113942


def _device(i: int = 0, **over: Any) -> dict[str, Any]:
    d = {
        "id": f"n0/gpu{i}",
        "kind": "gpu",
        "vendor": "nvidia",
        "model": "H100-SXM",
        "idle_w": 70,
        "tdp_w": 700,
        "min_cap_w": 200,
        "peak_rate": 1000.0,
    }
    d.update(over)
    return d


def _doc(
    n_devices: int = 1,
    demand: float = 500.0,
    *,
    duration_s: float = 100,
    tick_s: float = 1,
    faults: list[dict[str, Any]] | None = None,
    budget: float | None = None,
    device_over: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": "t",
        "duration_s": duration_s,
        "tick_s": tick_s,
        "seed": 1,
        "objective": {"max_slowdown": 1.1, "fleet_power_budget_w": budget},
        "devices": [_device(i, **(device_over or {})) for i in range(n_devices)],
        "streams": [
            {
                "id": "a",
                "demand_rate": demand,
                "devices": [f"n0/gpu{i}" for i in range(n_devices)],
                "phases": [{"at_s": 0, "beta": 0.33, "util": 0.95}],
            }
        ],
        "faults": faults or [],
    }


def _sim(doc: dict[str, Any], **kw: Any) -> FleetSimulator:
    return FleetSimulator(parse_scenario(doc), **kw)


# --------------------------------------------------------------------------------------------
# Physics, formula by formula


def test_demand_power_and_drawn_power_under_a_cap() -> None:
    p_dem = physics.demand_power_w(70.0, 700.0, 0.95)
    assert p_dem == pytest.approx(668.5, abs=1e-12)
    assert physics.drawn_power_w(p_dem, 400.0, True, 70.0) == 400.0
    assert physics.drawn_power_w(p_dem, 700.0, True, 70.0) == pytest.approx(668.5)
    assert physics.drawn_power_w(p_dem, 400.0, False, 70.0) == 70.0  # no work: idle


def test_rate_at_a_cap_and_uncapped() -> None:
    p, r = physics.capped_rate(1000.0, 70.0, 700.0, 0.95, 0.33, 400.0)
    assert p == 400.0
    assert r == pytest.approx(R_AT_400, rel=1e-12)
    # A cap above P_dem does not bind: R = peak_rate * util.
    _, r_full = physics.capped_rate(1000.0, 70.0, 700.0, 0.95, 0.33, 700.0)
    assert r_full == pytest.approx(950.0, rel=1e-12)
    # beta = 1: rate proportional to dynamic power.
    _, r_lin = physics.capped_rate(1000.0, 70.0, 700.0, 0.95, 1.0, 400.0)
    assert r_lin == pytest.approx(950.0 * 330 / 598.5, rel=1e-12)


def test_served_work_and_partial_share_power() -> None:
    served = physics.served_rate(0.5, 1000.0, R_AT_400)  # share 0.5 of 1000 = 500 < R
    assert served == 500.0
    assert physics.partial_power_w(70.0, 400.0, served, R_AT_400) == pytest.approx(
        281.3887690664892, rel=1e-12
    )
    full = physics.served_rate(1.0, 2000.0, R_AT_400)  # demand above R: serves R, draws P
    assert full == pytest.approx(R_AT_400)
    assert physics.partial_power_w(70.0, 400.0, full, R_AT_400) == pytest.approx(400.0)


def test_time_share_of_one_device_between_two_streams() -> None:
    # Device idle 100 W, TDP 500 W, peak 100; stream A util 1 beta 1 (P 500, R 100),
    # stream B util 0.5 beta 1 (P 300, R 50).
    p = np.array([[500.0], [300.0]])
    rate = np.array([[100.0], [50.0]])
    # Fits: loads 30/100 = 0.3 and 10/50 = 0.2; power 100 + 0.3*400 + 0.2*200 = 260.
    busy, served = physics.time_share(np.array([[30.0], [10.0]]), rate, np.array([1.0]))
    assert served[:, 0].tolist() == [30.0, 10.0]
    assert physics.shared_power_w(100.0, p, busy)[0] == pytest.approx(260.0)
    # Overloaded: loads 0.6 + 0.8 = 1.4 > 1, each stream gets 1/1.4 of its assigned demand.
    busy, served = physics.time_share(np.array([[60.0], [40.0]]), rate, np.array([1.0]))
    assert served[:, 0] == pytest.approx([60 / 1.4, 40 / 1.4])
    assert busy.sum() == pytest.approx(1.0)
    assert physics.shared_power_w(100.0, p, busy)[0] == pytest.approx(385.7142857142858)
    # Nothing available (standby / off the bus): nothing served, no NaN.
    busy, served = physics.time_share(np.array([[60.0], [0.0]]), rate, np.array([0.0]))
    assert served.tolist() == [[0.0], [0.0]] and busy.tolist() == [[0.0], [0.0]]


def test_slo_threshold_both_branches() -> None:
    # Demand below uncapped capacity: threshold demand / max_slowdown = 1000 / 1.1.
    thr = physics.slo_threshold_rate(1000.0, 1900.0, 1.1)
    assert thr == pytest.approx(909.0909090909)
    assert physics.slo_violated(909.0, thr)
    assert not physics.slo_violated(909.1, thr)
    # Demand above uncapped capacity: threshold capacity / max_slowdown = 1900 / 1.1.
    thr = physics.slo_threshold_rate(3000.0, 1900.0, 1.1)
    assert thr == pytest.approx(1727.2727272727)
    assert physics.slo_violated(1727.0, thr)
    assert not physics.slo_violated(1727.3, thr)
    # Exactly at the threshold (as an exact oracle would serve) is not a violation.
    assert not physics.slo_violated(thr * (1 - 1e-12), thr)


def test_budget_clipping_keeps_min_caps_and_scales_headroom() -> None:
    caps = physics.clip_caps_to_budget([700.0, 700.0, 400.0], [200.0, 200.0, 100.0], 1200.0)
    # headroom 500 + 500 + 300 = 1300, room 1200 - 500 = 700, factor 7/13
    assert caps == pytest.approx([200 + 500 * 7 / 13, 200 + 500 * 7 / 13, 100 + 300 * 7 / 13])
    assert caps.sum() == pytest.approx(1200.0)
    same = np.array([300.0, 300.0])
    assert physics.clip_caps_to_budget(same, [200.0, 200.0], 1000.0) is same
    assert physics.clip_caps_to_budget(same, [200.0, 200.0], None) is same


# --------------------------------------------------------------------------------------------
# The simulator applies the formulas


def test_simulator_tick_matches_hand_numbers() -> None:
    sim = _sim(_doc(demand=500.0, tick_s=2, duration_s=10))
    r = sim.step(caps_w=[400.0])
    t = r.truth
    expected_w = 70 + 330 * 500 / R_AT_400
    assert t.power_w[0] == pytest.approx(expected_w, rel=1e-12)
    assert t.energy_j[0] == pytest.approx(2 * expected_w, rel=1e-12)  # power x tick (2 s)
    assert t.work.tolist() == [1000.0]  # 500 units/s x 2 s
    assert t.served_rate.tolist() == [500.0]
    assert r.telemetry.work_rate[0] == 500.0
    assert r.telemetry.util_pct[0] == pytest.approx(100 * 500 / R_AT_400)
    assert r.telemetry.cap_w[0] == 400.0
    assert not t.slo_violated[0]
    # Demand above R(400): serves R(400) and draws the full 400 W; the SW power cap bit shows.
    sim = _sim(_doc(demand=2000.0))
    r = sim.step(caps_w=[400.0])
    assert r.truth.served_rate[0] == pytest.approx(R_AT_400)
    assert r.truth.power_w[0] == pytest.approx(400.0)
    assert r.telemetry.throttle_reasons_mask[0] == THROTTLE_SW_POWER_CAP
    # No demand: idle power, no work.
    r = _sim(_doc(demand=0.0)).step(caps_w=[400.0])
    assert r.truth.power_w[0] == 70.0 and r.truth.work[0] == 0.0


def test_simulator_slo_violation_both_branches() -> None:
    # Capacity branch: demand 2000 > uncapped 950 -> threshold 950 / 1.1 = 863.6.
    sim = _sim(_doc(demand=2000.0))
    assert sim.conditions().slo_rate[0] == pytest.approx(950 / 1.1)
    assert not sim.step(caps_w=[700.0]).truth.slo_violated[0]  # serves 950
    r = sim.step(caps_w=[200.0])  # serves R(200) = 574 < 863.6
    assert r.truth.served_rate[0] == pytest.approx(R_AT_200)
    assert r.truth.slo_violated[0]
    # Demand branch: demand 700 <= 950 -> threshold 700 / 1.1 = 636.4; R(200) = 574 < 636.4.
    sim = _sim(_doc(demand=700.0))
    assert sim.conditions().slo_rate[0] == pytest.approx(700 / 1.1)
    assert sim.step(caps_w=[200.0]).truth.slo_violated[0]
    assert not sim.step(caps_w=[400.0]).truth.slo_violated[0]  # serves 700
    # Demand 600: R(200) = 574 >= 600 / 1.1 = 545.5, so even the minimum cap is within the SLO.
    assert not _sim(_doc(demand=600.0)).step(caps_w=[200.0]).truth.slo_violated[0]


def test_weights_share_demand_between_devices() -> None:
    sim = _sim(_doc(n_devices=2, demand=1000.0))
    r = sim.step(weights=[[3.0, 1.0]])  # normalized to 0.75 / 0.25
    assert r.truth.served_rate_by_device[0].tolist() == [750.0, 250.0]
    even = sim.step()  # default: even weights
    assert even.truth.served_rate_by_device[0].tolist() == [500.0, 500.0]
    nobody = sim.step(weights=[[0.0, 0.0]])
    assert nobody.truth.served_rate[0] == 0.0 and nobody.truth.slo_violated[0]
    with pytest.raises(ValueError, match="weights"):
        sim.step(weights=[[-1.0, 1.0]])


def test_weights_outside_a_streams_devices_are_rejected() -> None:
    doc = _doc(n_devices=2)
    doc["streams"][0]["devices"] = ["n0/gpu0"]
    sim = _sim(doc)
    with pytest.raises(ValueError, match="does not serve stream"):
        sim.step(weights=[[0.5, 0.5]])


def test_caps_outside_device_limits_are_rejected() -> None:
    sim = _sim(_doc(n_devices=2))
    with pytest.raises(ValueError, match=r"n0/gpu1: 800 not in \[200, 700\]"):
        sim.step(caps_w=[400.0, 800.0])
    with pytest.raises(ValueError, match="n0/gpu0"):
        sim.step(caps_w=[150.0, 400.0])
    with pytest.raises(ValueError):
        sim.step(caps_w=[float("nan"), 400.0])
    with pytest.raises(ValueError, match="shape"):
        sim.step(caps_w=[400.0])


def test_fleet_budget_clips_caps() -> None:
    sim = _sim(_doc(n_devices=3, demand=3000.0, budget=1500.0))
    r = sim.step()  # every cap at tdp_w (2100 W in all) -> clipped to the 1500 W budget
    assert r.truth.budget_clipped
    assert r.telemetry.cap_w.sum() == pytest.approx(1500.0)
    assert r.telemetry.cap_w == pytest.approx([500.0, 500.0, 500.0])
    assert (r.truth.power_w <= 500.0 + 1e-9).all()
    r = sim.step(caps_w=[500.0, 500.0, 400.0])  # fits: unchanged
    assert not r.truth.budget_clipped
    assert r.telemetry.cap_w.tolist() == [500.0, 500.0, 400.0]


def test_phase_change_and_demand_that_holds() -> None:
    doc = _doc(demand=1000.0, duration_s=40)
    doc["streams"][0]["phases"] = [
        {"at_s": 0, "beta": 0.33, "util": 0.95},
        {"at_s": 10, "beta": 0.12, "util": 0.70, "demand_rate": 400.0},
        {"at_s": 20, "beta": 0.5, "util": 0.5},
    ]
    sim = _sim(doc)
    c = [sim.timeline.conditions(k) for k in (9, 10, 19, 20, 39)]
    assert [x.util[0] for x in c] == [0.95, 0.70, 0.70, 0.5, 0.5]
    assert [x.beta[0] for x in c] == [0.33, 0.12, 0.12, 0.5, 0.5]
    assert [x.demand_rate[0] for x in c] == [1000.0, 400.0, 400.0, 400.0, 400.0]
    works = [sim.step().truth.served_rate[0] for _ in range(40)]
    assert works[9] == pytest.approx(950.0) and works[10] == 400.0 and works[39] == 400.0


# --------------------------------------------------------------------------------------------
# Standby and wake


def test_standby_draws_standby_power_and_waking_takes_wake_s() -> None:
    sim = _sim(_doc(n_devices=2, demand=400.0, duration_s=100))
    park = [False, True]
    r = sim.step(weights=[[1.0, 0.0]], standby=park)
    assert r.truth.power_w[1] == pytest.approx(17.5)  # default standby_w = 0.25 * idle_w
    assert r.truth.parked.tolist() == [False, True]
    assert r.telemetry.util_pct[1] == 0.0 and r.telemetry.work_rate[1] == 0.0
    for _ in range(5):
        sim.step(weights=[[1.0, 0.0]], standby=park)
    # Wake it with a share: 30 s (default wake_s) at idle_w with no work, then it works.
    woke = [sim.step(weights=[[0.5, 0.5]]) for _ in range(32)]
    for r in woke[:30]:
        assert r.truth.power_w[1] == 70.0
        assert r.truth.served_rate_by_device[0, 1] == 0.0
        assert r.truth.waking[1]
    assert woke[30].truth.served_rate_by_device[0, 1] == 200.0
    assert not woke[30].truth.waking[1]
    assert woke[30].truth.power_w[1] > 70.0


def test_wake_that_ends_mid_tick_leaves_the_rest_of_the_tick_for_work() -> None:
    sim = _sim(_doc(demand=2000.0, device_over={"wake_s": 2.5}))
    sim.step(standby=[True])
    rs = [sim.step() for _ in range(4)]
    assert [r.truth.served_rate[0] for r in rs[:2]] == [0.0, 0.0]
    assert rs[2].truth.served_rate[0] == pytest.approx(0.5 * 950.0)  # half a tick at full load
    assert rs[2].truth.power_w[0] == pytest.approx(0.5 * 70.0 + 0.5 * 668.5)
    assert rs[3].truth.served_rate[0] == pytest.approx(950.0)


def test_custom_standby_power_and_instant_wake() -> None:
    sim = _sim(_doc(demand=100.0, device_over={"standby_w": 5.0, "wake_s": 0}))
    assert sim.step(standby=[True]).truth.power_w[0] == 5.0
    assert sim.step(standby=[False]).truth.served_rate[0] == 100.0


def test_parking_a_device_with_a_share_loses_that_share() -> None:
    sim = _sim(_doc(n_devices=2, demand=1000.0))
    r = sim.step(standby=[False, True])  # even weights: half the demand goes to a parked device
    assert r.truth.served_rate[0] == 500.0
    assert r.truth.slo_violated[0]


# --------------------------------------------------------------------------------------------
# Faults


def _fault(kind: str, at_s: float = 10, duration_s: float = 20, device: str = "n0/gpu1") -> dict:
    return {"at_s": at_s, "device": device, "type": kind, "duration_s": duration_s}


def _run(sim: FleetSimulator, n: int, **controls: Any) -> list[Any]:
    return [sim.step(**controls) for _ in range(n)]


def test_thermal_throttle_drops_the_effective_cap_to_min_cap() -> None:
    sim = _sim(_doc(n_devices=2, demand=4000.0, faults=[_fault("thermal_throttle")]))
    rs = _run(sim, 40)
    before, during, after = rs[9], rs[10], rs[30]
    assert during.truth.cap_w.tolist() == [700.0, 200.0]
    assert during.truth.power_w[1] == pytest.approx(200.0)
    assert during.truth.served_rate_by_device[0, 1] == pytest.approx(R_AT_200)
    assert during.telemetry.cap_w[1] == 700.0  # the limit the driver holds is unchanged
    assert int(during.telemetry.throttle_reasons_mask[1]) & THROTTLE_HW_THERMAL_SLOWDOWN
    assert not int(before.telemetry.throttle_reasons_mask[1]) & THROTTLE_HW_THERMAL_SLOWDOWN
    assert during.truth.slo_rate[0] == pytest.approx((950 + R_AT_200) / 1.1)
    # Cooling is degraded: the throttled device runs hot although it draws less than its twin.
    assert rs[29].telemetry.temp_c[1] > rs[29].telemetry.temp_c[0] + 4
    assert after.truth.cap_w.tolist() == [700.0, 700.0]


def test_off_bus_delivers_nothing_and_reports_nothing() -> None:
    sim = _sim(_doc(n_devices=2, demand=1000.0, faults=[_fault("off_bus")]))
    rs = _run(sim, 40)
    during = rs[15]
    assert during.truth.served_rate_by_device[0].tolist() == [500.0, 0.0]
    assert during.truth.power_w[1] == 70.0  # still powered, at idle
    assert during.truth.slo_rate[0] == pytest.approx(950 / 1.1)  # only gpu0 could deliver
    tel = during.telemetry
    assert tel.reporting.tolist() == [True, False]
    for col in ("power_w", "util_pct", "temp_c", "cap_w", "work_rate", "ecc_corrected_total"):
        assert math.isnan(getattr(tel, col)[1]) and not math.isnan(getattr(tel, col)[0])
    metrics = tel.to_metrics()
    assert all(v[1] is None and v[0] is not None for v in metrics.values())
    assert set(metrics) <= set(METRICS)
    # Back on the bus: reports again, one XID counted, works.
    assert rs[30].telemetry.reporting.all()
    assert rs[30].telemetry.xid_total.tolist() == [0.0, 1.0]
    assert rs[9].telemetry.xid_total.tolist() == [0.0, 0.0]
    assert rs[30].truth.served_rate_by_device[0].tolist() == [500.0, 500.0]


def test_off_bus_device_ignores_standby_and_comes_back_awake() -> None:
    sim = _sim(_doc(n_devices=2, demand=1000.0, faults=[_fault("off_bus", at_s=0)]))
    r = sim.step(standby=[False, True])
    assert r.truth.power_w[1] == 70.0 and not r.truth.parked[1]
    _run(sim, 19, standby=[False, True])
    back = sim.step()  # tick 20: back on the bus, awake, no wake delay
    assert back.truth.served_rate_by_device[0, 1] == 500.0


def test_ecc_storm_cuts_throughput_by_a_fifth_and_counts_errors() -> None:
    sim = _sim(_doc(n_devices=2, demand=4000.0, faults=[_fault("ecc_storm")]))
    rs = _run(sim, 40)
    assert rs[15].truth.served_rate_by_device[0].tolist() == pytest.approx([950.0, 760.0])
    assert rs[15].truth.power_w == pytest.approx([668.5, 668.5])  # full load either way
    ecc = np.array([r.telemetry.ecc_corrected_total[1] for r in rs])
    assert ecc[9] == 0 and ecc[29] > ecc[10] > 0 and ecc[39] == ecc[29]
    assert (np.diff(ecc) >= 0).all()
    assert rs[15].telemetry.ecc_corrected_total[0] == 0
    # Partial share: the reduced rate makes each unit cost 1/0.8 the dynamic energy.
    r = _sim(_doc(demand=300.0, faults=[_fault("ecc_storm", at_s=0, device="n0/gpu0")])).step()
    assert r.truth.power_w[0] == pytest.approx(70 + 598.5 * 300 / 760.0)


def test_power_spike_adds_thirty_percent_noise_to_reported_power_only() -> None:
    sim = _sim(
        _doc(n_devices=2, demand=1000.0, duration_s=3000, faults=[_fault("power_spike", 0, 2000)])
    )
    rs = _run(sim, 3000)
    rel = np.array([r.telemetry.power_w / r.truth.power_w - 1.0 for r in rs])
    assert 0.27 < rel[:2000, 1].std() < 0.33
    assert 0.018 < rel[2000:, 1].std() < 0.022
    assert 0.018 < rel[:, 0].std() < 0.022  # the healthy device: 2% noise throughout
    assert abs(rel[:, 0].mean()) < 0.002
    assert rs[0].truth.power_w[1] == rs[0].truth.power_w[0]  # true power unchanged


# --------------------------------------------------------------------------------------------
# Determinism, telemetry, thermal model


def test_same_seed_same_telemetry_other_seed_other_noise() -> None:
    scenario = load_bundled_scenario("hetero-budget")

    def trace(seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sim = FleetSimulator(scenario, seed=seed)
        rs = _run(sim, 3000)
        power = np.array([r.telemetry.power_w for r in rs])
        ecc = np.array([r.telemetry.ecc_corrected_total for r in rs])
        truth = np.array([r.truth.power_w for r in rs])
        return power, ecc, truth

    a, b, c = trace(None), trace(scenario.seed), trace(scenario.seed + 1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0], equal_nan=True)  # other noise
    assert not np.array_equal(a[1], c[1], equal_nan=True)  # other ECC counts
    np.testing.assert_array_equal(a[2], c[2])  # the truth does not depend on the seed


def test_noise_is_independent_of_decisions() -> None:
    """Every policy run on one scenario and seed sees the same noise draws."""
    s1, s2 = _sim(_doc(n_devices=2)), _sim(_doc(n_devices=2))
    r1 = s1.step(caps_w=[700.0, 700.0])
    r2 = s2.step(caps_w=[300.0, 300.0], standby=[False, True])
    np.testing.assert_allclose(
        r1.telemetry.power_w / r1.truth.power_w, r2.telemetry.power_w / r2.truth.power_w
    )


def test_telemetry_timestamps_and_tick_counter() -> None:
    sim = _sim(_doc(tick_s=0.5, duration_s=2), start_ns=1_000)
    ts = [sim.step().telemetry.ts_ns for _ in range(4)]
    assert ts == [1_000, 500_001_000, 1_000_001_000, 1_500_001_000]
    assert sim.done
    with pytest.raises(RuntimeError, match="ended"):
        sim.step()


def test_reported_power_is_a_one_second_average_when_ticks_are_shorter() -> None:
    sim = _sim(_doc(tick_s=0.5, duration_s=4, demand=0.0))
    r0 = sim.step(standby=[True])  # 17.5 W
    r1 = sim.step(standby=[False])  # starts waking: 70 W
    ratio0 = r0.telemetry.power_w[0] / 17.5
    ratio1 = r1.telemetry.power_w[0] / ((17.5 + 70.0) / 2)
    assert abs(ratio0 - 1) < 0.1 and abs(ratio1 - 1) < 0.1


def test_thermal_model_is_first_order() -> None:
    th = ThermalModel()
    sim = _sim(_doc(demand=4000.0, duration_s=600))
    temps = [sim.step().telemetry.temp_c[0] for _ in range(600)]
    idle_c = th.ambient_c + th.rise_at_tdp_c * 70 / 700
    full_c = th.ambient_c + th.rise_at_tdp_c * 668.5 / 700
    # One step from the idle steady state, then convergence to the full-load steady state.
    first = full_c + (idle_c - full_c) * math.exp(-1 / th.time_constant_s)
    assert temps[0] == pytest.approx(first)
    assert temps[-1] == pytest.approx(full_c, abs=1e-6)
    assert all(a <= b for a, b in itertools.pairwise(temps))


def test_telemetry_arrays_cannot_corrupt_the_simulator() -> None:
    sim = _sim(_doc())
    r = sim.step()
    with pytest.raises(ValueError):
        r.telemetry.cap_w[0] = 1.0  # the default caps are the device table itself, read-only


# --------------------------------------------------------------------------------------------
# Scenario files: errors name the field


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_doc(n_devices=3))
    node: Any = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("devices.2.min_cap_w", 800, "devices[2].min_cap_w=800 > tdp_w=700"),
        ("devices.1.min_cap_w", 50, "devices[1].min_cap_w=50 must be > idle_w=70"),
        ("devices.0.tdp_w", 60, "devices[0].tdp_w=60 must be > idle_w=70"),
        ("devices.0.kind", "fpga", "devices[0].kind='fpga' is not one of gpu, cpu, npu, tpu"),
        ("devices.0.peak_rate", 0, "devices[0].peak_rate=0 must be > 0"),
        ("devices.0.peak_rate", "fast", "devices[0].peak_rate: must be a finite number"),
        ("devices.0.idle_w", True, "devices[0].idle_w: must be a finite number"),
        ("devices.1.standby_w", 80, "devices[1].standby_w=80 must be in [0, idle_w=70]"),
        ("devices.1.wake_s", -1, "devices[1].wake_s=-1 must be >= 0"),
        ("devices.1.id", "n0/gpu0", "devices[1].id='n0/gpu0' is a duplicate"),
        ("devices.0.colour", "red", "devices[0]: unknown key(s) 'colour'"),
        ("devices.0.vendor", _DELETE, "devices[0]: missing required key(s) 'vendor'"),
        ("streams.0.devices.1", "n9/gpu9", "streams[0].devices[1]='n9/gpu9' is not a device id"),
        ("streams.0.devices.1", "n0/gpu0", "streams[0].devices[1]='n0/gpu0' is listed twice"),
        ("streams.0.devices", [], "streams[0].devices: must not be empty"),
        ("streams.0.phases.0.at_s", 5, "streams[0].phases[0].at_s=5 must be 0"),
        ("streams.0.phases.0.beta", 0, "streams[0].phases[0].beta=0 must be in (0, 1]"),
        ("streams.0.phases.0.util", 1.5, "streams[0].phases[0].util=1.5 must be in (0, 1]"),
        ("streams.0.phases.0.power", 1, "streams[0].phases[0]: unknown key(s) 'power'"),
        ("streams.0.demand_rate", -3, "streams[0].demand_rate=-3 must be >= 0"),
        ("streams.0.demand_rate", _DELETE, "streams[0].demand_rate is missing"),
        ("objective.max_slowdown", 0.9, "objective.max_slowdown=0.9 must be >= 1"),
        ("objective.fleet_power_budget_w", 500, "fleet_power_budget_w=500 < sum of min_cap_w=600"),
        ("objective.goal", "fast", "objective: unknown key(s) 'goal'"),
        ("duration_s", 10.5, "duration_s=10.5 is not a whole number of ticks of tick_s=1"),
        ("tick_s", 0, "tick_s=0 must be > 0"),
        ("seed", 1.5, "seed must be an integer >= 0"),
        ("extra", 1, "$: unknown key(s) 'extra'"),
        ("name", _DELETE, "$: missing required key(s) 'name'"),
        ("faults", [_fault("meltdown", device="n0/gpu0")], "faults[0].type='meltdown' is not"),
        ("faults", [_fault("off_bus", device="n7/gpu0")], "faults[0].device='n7/gpu0' is not"),
        ("faults", [_fault("off_bus", duration_s=0)], "faults[0].duration_s=0 must be > 0"),
        ("faults", [{"at_s": 1, "device": "n0/gpu0", "type": "off_bus"}], "faults[0]: missing"),
    ],
)
def test_config_errors_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario(_mutate(path, value))
    assert message in str(info.value)


def test_unsorted_phases_are_an_error() -> None:
    doc = _doc()
    doc["streams"][0]["phases"] = [
        {"at_s": 0, "beta": 0.3, "util": 0.9},
        {"at_s": 20, "beta": 0.3, "util": 0.9},
        {"at_s": 10, "beta": 0.3, "util": 0.9},
    ]
    with pytest.raises(ConfigError, match=r"streams\[0\]\.phases\[2\]\.at_s=10 must be > "):
        parse_scenario(doc)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",')
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON at line 1"):
        load_scenario(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_mutate("devices.2.min_cap_w", 800)))
    with pytest.raises(ConfigError, match=r"wrong\.json: devices\[2\]\.min_cap_w=800 > tdp_w=700"):
        load_scenario(wrong)
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="no bundled scenario 'nope'"):
        load_bundled_scenario("nope")


def test_optional_fields_take_the_spec_defaults() -> None:
    s = parse_scenario(_doc())
    assert s.devices[0].standby_w == 17.5 and s.devices[0].wake_s == 30.0
    assert s.faults == () and s.objective.fleet_power_budget_w is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.devices[0].idle_w = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Bundled scenarios and speed


def test_the_three_scenarios_are_bundled() -> None:
    assert {"two-phase-8gpu", "hetero-budget", "diurnal-parking"} <= set(bundled_scenario_names())


@pytest.mark.parametrize("name", bundled_scenario_names())
def test_bundled_scenario_runs_to_completion(name: str) -> None:
    scenario = load_bundled_scenario(name)
    sim = FleetSimulator(scenario)
    totals = sim.run()
    assert sim.done and totals.ticks == scenario.n_ticks
    assert math.isfinite(totals.joules_per_unit) and totals.total_work > 0
    assert 0.0 <= totals.slo_violation_fraction < 0.5


def test_hetero_budget_has_its_kinds_budget_and_faults() -> None:
    s = load_bundled_scenario("hetero-budget")
    assert {d.kind for d in s.devices} >= {"gpu", "cpu", "npu"}
    assert s.objective.fleet_power_budget_w is not None
    assert s.faults


def test_diurnal_parking_pays_for_parking_idle_devices() -> None:
    """Parking the devices a low-demand phase does not need saves energy within the SLO."""
    s = load_bundled_scenario("diurnal-parking")
    base = FleetSimulator(s)
    parked = FleetSimulator(s)
    chat, n_dev = 0, len(s.devices)
    for k in range(1200):  # the night: chat demand 900 then 700, batch on the last two devices
        c = base.timeline.conditions(k)
        need = int(np.ceil(c.demand_rate[chat] / (0.8 * 700.0))) + 1
        park = np.arange(n_dev) >= need
        park[-2:] = False
        w = base.even_weights.copy()
        w[chat] = ~park
        base.step()
        parked.step(weights=w, standby=park)
    a, b = base.totals(), parked.totals()
    assert b.total_energy_j < 0.95 * a.total_energy_j
    assert b.slo_violation_fraction == 0.0
    assert b.total_work == pytest.approx(a.total_work)


def test_one_hour_ten_devices_simulates_fast() -> None:
    s: Scenario = dataclasses.replace(load_bundled_scenario("diurnal-parking"), duration_s=3600)
    assert len(s.devices) == 10 and s.n_ticks == 3600
    sim = FleetSimulator(s)
    t0 = time.process_time()
    sim.run()
    cpu_s = time.process_time() - t0
    assert cpu_s < 2.0, f"one hour of 10 devices took {cpu_s:.2f} s of CPU"


def test_run_with_a_policy_sees_the_previous_telemetry() -> None:
    seen: list[int | None] = []

    def policy(last: Any) -> Controls:
        seen.append(None if last is None else last.telemetry.tick)
        return Controls(caps_w=[400.0])

    totals = _sim(_doc(duration_s=3)).run(policy)
    assert seen == [None, 0, 1] and totals.ticks == 3


# --------------------------------------------------------------------------------------------
# Properties


@st.composite
def _fleets(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n_dev = draw(st.integers(1, 4))
    devices = []
    for i in range(n_dev):
        idle = draw(st.floats(5, 150))
        tdp = idle + draw(st.floats(20, 800))
        min_cap = draw(st.floats(idle + 1, tdp))
        devices.append(
            _device(
                i,
                idle_w=idle,
                tdp_w=tdp,
                min_cap_w=min_cap,
                peak_rate=draw(st.floats(1, 2000)),
                wake_s=draw(st.sampled_from([0, 0.5, 1, 2.5])),
            )
        )
    ids = [d["id"] for d in devices]
    streams = []
    for s in range(draw(st.integers(1, 3))):
        members = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=n_dev, unique=True))
        phases = [
            {"at_s": 2 * j, "beta": draw(st.floats(0.01, 1)), "util": draw(st.floats(0.01, 1))}
            for j in range(draw(st.integers(1, 3)))
        ]
        streams.append(
            {
                "id": f"s{s}",
                "demand_rate": draw(st.floats(0, 5000)),
                "devices": members,
                "phases": phases,
            }
        )
    faults = [
        {
            "at_s": draw(st.integers(0, 5)),
            "duration_s": draw(st.integers(1, 4)),
            "device": draw(st.sampled_from(ids)),
            "type": draw(st.sampled_from(["thermal_throttle", "off_bus", "ecc_storm"])),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    floor = sum(d["min_cap_w"] for d in devices)
    top = sum(d["tdp_w"] for d in devices)
    budget = draw(st.one_of(st.none(), st.floats(floor, top)))
    doc = {
        "name": "prop",
        "duration_s": 6,
        "tick_s": 1,
        "seed": draw(st.integers(0, 2**32)),
        "objective": {"max_slowdown": draw(st.floats(1, 2)), "fleet_power_budget_w": budget},
        "devices": devices,
        "streams": streams,
        "faults": faults,
    }
    controls = []
    for _ in range(6):
        fracs = [draw(st.floats(0, 1)) for _ in range(n_dev)]
        weights = [
            [draw(st.floats(0, 1)) if d["id"] in s["devices"] else 0.0 for d in devices]
            for s in streams
        ]
        controls.append(
            {
                "caps_w": [
                    d["min_cap_w"] + f * (d["tdp_w"] - d["min_cap_w"])
                    for d, f in zip(devices, fracs, strict=True)
                ],
                "weights": weights,
                "standby": [draw(st.booleans()) for _ in range(n_dev)],
            }
        )
    return doc, controls


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fleets())
def test_power_and_work_stay_within_physical_bounds(
    case: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    doc, controls = case
    sim = _sim(doc)
    standby_w, idle_w = sim.standby_w, sim.idle_w
    for c in controls:
        cond = sim.conditions()
        r = sim.step(**c)
        t = r.truth
        eps = 1e-9 * np.maximum(1.0, sim.tdp_w)
        # Never above the effective cap while working; never below standby power.
        assert (t.power_w <= t.cap_w + eps).all()
        assert (t.power_w >= standby_w - eps).all()
        assert np.where(t.parked, True, t.power_w >= idle_w - eps).all()
        # Never more work than demanded, nor from a device that cannot work.
        assert (t.served_rate <= cond.demand_rate * (1 + 1e-12) + 1e-9).all()
        assert (t.served_rate_by_device >= 0).all()
        idle_devices = t.parked | cond.off_bus
        assert (t.served_rate_by_device[:, idle_devices] == 0).all()
        assert np.isfinite(t.power_w).all() and np.isfinite(t.served_rate).all()
        # The enforced caps respect the device limits and the fleet budget.
        assert (t.cap_w >= sim.min_cap_w - eps).all() and (t.cap_w <= sim.tdp_w + eps).all()
        budget = doc["objective"]["fleet_power_budget_w"]
        if budget is not None:
            assert t.cap_w.sum() <= budget * (1 + 1e-12)
        # Every stream is served at most its uncapped capacity.
        assert (t.served_rate <= cond.uncapped_rate * (1 + 1e-9) + 1e-9).all()
