"""The fleet-events stage's core: action results joined to their actions, savings against the
host's pre-optimizer baseline, durable and idempotent baselines."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import accelpilot.dashboards.measurements as measurements
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.aggregates import Aggregate, MetricStats
from accelpilot.streams.fleet_events import FleetEvents, policy_of

S = 10**9
W = 10 * S


def _stats(mean: float) -> MetricStats:
    return MetricStats(min=mean, max=mean, mean=mean, p95=mean, last=mean, count=10)


def _host_window(
    start_ns: int, power_w: float, rate: float, host: str = "n0", samples: int = 10
) -> Aggregate:
    return Aggregate(
        scope="host",
        key=host,
        host_id=host,
        window_s=10.0,
        window_start_ns=start_ns,
        window_end_ns=start_ns + W,
        sample_count=samples,
        gap_count=0,
        energy_j=power_w * 10.0,
        metrics={"power_w": _stats(power_w), "work_rate": _stats(rate)},
    )


def _action(
    action_id: str, kind: str = "set_power_cap", issuer: str = "optimizer:learned"
) -> Action:
    return Action(
        action_id=action_id,
        host_id="n0",
        seq=1,
        kind=kind,  # type: ignore[arg-type]
        device_id="n0/gpu0",
        cap_w=500.0,
        issued_ts_ns=0,
        expires_ts_ns=1,
        issuer=issuer,
        key_id="k",
    )


def _result(action_id: str, ts_ns: int, outcome: str = "applied") -> ActionResult:
    return ActionResult(
        action_id=action_id,
        host_id="n0",
        device_id="n0/gpu0",
        ts_ns=ts_ns,
        outcome=outcome,  # type: ignore[arg-type]
        previous_cap_w=700.0,
        new_cap_w=500.0,
    )


def _fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split(" ")[1].split(","))


def test_measurement_docstring_examples_run() -> None:
    assert doctest.testmod(measurements).failed == 0


def test_results_carry_the_kind_of_their_action() -> None:
    ev = FleetEvents(10.0, cluster="c1")
    ev.on_action(_action("a1", "park"))
    assert ev.unknown([_result("a1", 5), _result("a2", 6)]) == ["a2"]
    lines = ev.on_results([_result("a1", 5), _result("a2", 6, "rejected")])
    assert lines[0].startswith(
        "action_result,cluster=c1,host=n0,device=n0/gpu0,kind=park,outcome=applied "
    )
    assert lines[1].startswith(
        "action_result,cluster=c1,host=n0,device=n0/gpu0,kind=unknown,outcome=rejected "
    )


def test_savings_against_the_baseline_intensity() -> None:
    ev = FleetEvents(10.0, min_baseline_samples=20, cluster="c1")
    # Baseline: 400 W for 100 units/s = 4 J/unit, three windows.
    for k in range(3):
        assert ev.on_aggregate(_host_window(k * W, 400.0, 100.0)) == []
    ev.on_action(_action("a1"))
    ev.on_results([_result("a1", 3 * W + 2 * S)])
    # The window holding the first action is neither baseline nor savings.
    assert ev.on_aggregate(_host_window(3 * W, 380.0, 100.0)) == []
    # After: 300 W for 100 units/s = 3 J/unit -> 25 % less energy per unit of work.
    (line,) = ev.on_aggregate(_host_window(4 * W, 300.0, 100.0))
    assert line.startswith("optimizer_savings,cluster=c1,policy=learned,host=n0 ")
    f = _fields(line.rsplit(" ", 1)[0])
    assert float(f["energy_j"]) == pytest.approx(3000.0)
    assert float(f["baseline_energy_j"]) == pytest.approx(4000.0)
    assert float(f["savings_ratio"]) == pytest.approx(0.25)
    assert line.endswith(f" {5 * W}")
    # The same work at a lower rate is compared per unit of work, not per window.
    (line,) = ev.on_aggregate(_host_window(5 * W, 200.0, 50.0))
    assert float(_fields(line.rsplit(" ", 1)[0])["savings_ratio"]) == pytest.approx(0.0)


def test_no_savings_without_baseline_or_work_or_an_optimizer() -> None:
    ev = FleetEvents(10.0, min_baseline_samples=20, cluster="c1")
    ev.on_aggregate(_host_window(0, 400.0, 100.0))  # 10 samples: too few
    ev.on_action(_action("a1"))
    ev.on_action(_action("m1", issuer="operator:alice"))
    ev.on_results([_result("m1", W + S)])  # a manual action does not end the baseline
    assert ev.hosts["n0"].first_action_ts_ns is None
    ev.on_results([_result("a1", W + S)])
    assert ev.on_aggregate(_host_window(2 * W, 300.0, 100.0)) == []
    ev2 = FleetEvents(10.0, min_baseline_samples=10, cluster="c1")
    ev2.on_aggregate(_host_window(0, 400.0, 100.0))
    ev2.on_action(_action("a1"))
    ev2.on_results([_result("a1", W)])
    assert ev2.on_aggregate(_host_window(2 * W, 300.0, 0.0)) == []  # no work
    assert len(ev2.on_aggregate(_host_window(2 * W, 300.0, 10.0))) == 1
    other = _host_window(2 * W, 300.0, 10.0)
    assert ev2.on_aggregate(Aggregate(**{**_asdict(other), "window_s": 60.0})) == []


def _asdict(agg: Aggregate) -> dict[str, object]:
    return {f: getattr(agg, f) for f in agg.__struct_fields__}


def test_windows_seen_before_the_action_was_known_leave_the_baseline() -> None:
    ev = FleetEvents(10.0, min_baseline_samples=10, cluster="c1")
    for k in range(4):
        ev.on_aggregate(_host_window(k * W, 400.0, 100.0))
    ev.on_action(_action("a1"))
    ev.on_results([_result("a1", 2 * W + S)])
    assert sorted(ev.hosts["n0"].windows) == [0, W]


@given(
    st.lists(
        st.tuples(st.floats(50, 1000), st.floats(1, 500), st.integers(1, 20)),
        min_size=1,
        max_size=30,
    )
)
def test_replayed_windows_do_not_change_the_baseline(
    windows: list[tuple[float, float, int]],
) -> None:
    ev = FleetEvents(10.0, cluster="c1")
    aggs = [_host_window(k * W, p, r, samples=n) for k, (p, r, n) in enumerate(windows)]
    for a in aggs:
        ev.on_aggregate(a)
    once = ev.hosts["n0"].intensity_j_per_unit()
    for a in reversed(aggs):
        ev.on_aggregate(a)
    assert ev.hosts["n0"].intensity_j_per_unit() == once
    want = sum(p * n for p, _, n in windows) / sum(r * n for _, r, n in windows)
    assert once == pytest.approx(want)


def test_baselines_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "savings-baselines.json"
    ev = FleetEvents(10.0, path, min_baseline_samples=20, cluster="c1")
    for k in range(3):
        ev.on_aggregate(_host_window(k * W, 400.0, 100.0))
    ev.on_action(_action("a1"))
    ev.on_results([_result("a1", 3 * W)])
    ev.save_if_changed()
    again = FleetEvents(10.0, path, min_baseline_samples=20, cluster="c1")
    (line,) = again.on_aggregate(_host_window(4 * W, 300.0, 100.0))
    assert float(_fields(line.rsplit(" ", 1)[0])["savings_ratio"]) == pytest.approx(0.25)
    # Another window length, or a corrupt file: start without (and say so), never crash.
    assert FleetEvents(60.0, path, cluster="c1").hosts == {}
    path.write_text("{not json")
    assert FleetEvents(10.0, path, cluster="c1").hosts == {}


def test_policy_names() -> None:
    assert policy_of("optimizer:learned") == "learned"
    assert policy_of("operator:alice") == "operator:alice"


def test_results_at_the_same_instant_stay_distinct_points_and_replays_overwrite() -> None:
    ev = FleetEvents(10.0, cluster="c1")
    ev.on_action(_action("a1", "set_load_weights"))
    ev.on_action(_action("a2", "set_load_weights"))
    r1 = ActionResult(action_id="a1", host_id="n0", ts_ns=5 * S, outcome="applied")
    r2 = ActionResult(action_id="a2", host_id="n0", ts_ns=5 * S, outcome="applied")
    lines = ev.on_results([r1, r2])
    keys = {(line.split(" ")[0], line.rsplit(" ", 1)[1]) for line in lines}
    assert len(keys) == 2  # same series, different times
    assert all(5 * S <= int(t) < 5 * S + 10**6 for _, t in keys)
    assert ev.on_results([r1, r2]) == lines
