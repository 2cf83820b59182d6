"""FleetRollup: host windows from every worker in, one fleet window per window out."""

from __future__ import annotations

from accelpilot.schemas.aggregates import Aggregate, MetricStats
from accelpilot.streams.aggregates import fleet_rollup
from accelpilot.streams.rollups import FleetRollup

T0 = 1_700_000_000 * 10**9
W = 10 * 10**9


def host_window(host: str, k: int, power_w: float, scope: str = "host") -> Aggregate:
    stats = MetricStats(min=power_w, max=power_w, mean=power_w, p95=power_w, last=power_w, count=10)
    return Aggregate(scope=scope, key=host, host_id=host, window_s=10.0,  # type: ignore[arg-type]
                     window_start_ns=T0 + k * W, window_end_ns=T0 + (k + 1) * W, sample_count=10,
                     gap_count=0, energy_j=power_w * 10, metrics={"power_w": stats})  # fmt: skip


def test_a_fleet_window_is_emitted_once_the_hosts_moved_past_the_next_window() -> None:
    r = FleetRollup(allowed_lateness_s=5.0)
    out: list[Aggregate] = []
    for k in range(4):
        for host, p in (("a", 100.0), ("b", 300.0)):
            out += [(k, host, agg) for agg in r.add(host_window(host, k, p + k))]  # type: ignore[misc]
    # Window k is complete once a host window ending >= end + 10 s + 5 s is seen: k + 2.
    assert [(k, h, a.window_start_ns) for k, h, a in out] == [  # type: ignore[misc]
        (2, "a", T0), (3, "a", T0 + W)
    ]  # fmt: skip
    first = out[0][2]  # type: ignore[index]
    assert first == fleet_rollup([host_window("a", 0, 100.0), host_window("b", 0, 300.0)])
    assert first.scope == "fleet" and first.sample_count == 20
    assert first.metrics["power_w"].mean == 400.0  # power sums across hosts
    assert first.energy_j == 4000.0
    assert r.open_windows == 2


def test_a_late_host_re_emits_its_window_and_duplicates_change_nothing() -> None:
    r = FleetRollup(allowed_lateness_s=0.0)
    r.add(host_window("a", 0, 100.0))
    (emitted,) = r.add(host_window("a", 2, 100.0))
    assert emitted.sample_count == 10
    (again,) = r.add(host_window("b", 0, 50.0))  # b replays its buffer: window 0 again
    assert again.sample_count == 20 and again.window_start_ns == emitted.window_start_ns
    (dup,) = r.add(host_window("b", 0, 50.0))  # delivered twice
    assert dup == again
    assert r.re_emitted_total == 2


def test_a_batch_of_late_hosts_sums_their_fleet_window_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import accelpilot.streams.rollups as rollups

    r = FleetRollup(allowed_lateness_s=0.0)
    r.add(host_window("a", 0, 100.0))
    (emitted,) = r.add(host_window("a", 2, 100.0))
    calls: list[int] = []

    def counted(hosts: list[Aggregate]) -> Aggregate:
        calls.append(len(hosts))
        return fleet_rollup(hosts)

    monkeypatch.setattr(rollups, "fleet_rollup", counted)
    late = [host_window(f"h{i:03d}", 0, 10.0) for i in range(300)]
    (again,) = r.add_batch(late)  # one re-emit, not 300
    assert calls == [301]  # a and the 300 late hosts
    assert again.window_start_ns == emitted.window_start_ns
    assert again == fleet_rollup([host_window("a", 0, 100.0), *late])
    assert r.re_emitted_total == 300


def test_other_scopes_are_ignored_and_flush_emits_the_rest() -> None:
    r = FleetRollup(allowed_lateness_s=5.0)
    assert r.add(host_window("a/gpu0", 0, 1.0, scope="device")) == []
    assert r.add(host_window("a", 0, 100.0)) == []
    assert r.add(host_window("a", 1, 100.0)) == []
    flushed = r.flush()
    assert [a.window_start_ns for a in flushed] == [T0, T0 + W]
    assert r.flush() == [] and r.open_windows == 0


def test_old_windows_are_forgotten() -> None:
    r = FleetRollup(allowed_lateness_s=0.0, keep_windows=3)
    for k in range(20):
        r.add(host_window("a", k, 1.0))
    assert len(r._windows) <= 3 + 2
