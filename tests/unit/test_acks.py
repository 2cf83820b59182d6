"""AckGate: a sample's event is released exactly when every window containing it has closed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from accelpilot.schemas.samples import HostSample
from accelpilot.streams.acks import AckGate
from accelpilot.streams.aggregates import WindowAggregator

T0 = 1_700_000_000 * 10**9
S = 10**9


def tick(host: str, ts_ns: int) -> HostSample:
    return HostSample(host_id=host, ts_ns=ts_ns, seq=0, interval_s=1.0, device_ids=[f"{host}/g"],
                      device_kinds=["gpu"], metrics={"power_w": [100.0]})  # fmt: skip


def test_events_wait_for_the_longest_window() -> None:
    aggs = [WindowAggregator(2.0, 0.0), WindowAggregator(4.0, 0.0)]
    gate = AckGate(aggs)
    released: list[int] = []
    for k in range(9):
        s = tick("h", T0 + k * S)
        for a in aggs:
            a.add(s)
        gate.hold("h", s.ts_ns, k)
        released += gate.releasable()
    # At t=8 s the 4 s windows [0, 4) and [4, 8) have closed: samples 0..7 are released.
    assert released == list(range(8))
    assert gate.held == 1


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    lateness=st.sampled_from([0.0, 1.5, 3.0]),
)
def test_release_matches_the_window_definition(offsets: list[int], lateness: float) -> None:
    """Released = a prefix of each host's arrivals whose every window (w, c) has
    (ts // w + 1) * w <= c; nothing is released twice."""
    aggs = [WindowAggregator(3.0, lateness), WindowAggregator(7.0, lateness)]
    gate = AckGate(aggs)
    arrived: list[tuple[str, int]] = []
    released: list[tuple[str, int]] = []
    for i, off in enumerate(offsets):
        host = "ab"[i % 2]
        ts = T0 + off * S // 2
        s = tick(host, ts)
        for a in aggs:
            a.add(s)
        gate.hold(host, ts, (host, ts, i))
        arrived.append((host, ts))
        released += [(h, t) for h, t, _ in gate.releasable()]
    for host in "ab":
        mine = [t for h, t in arrived if h == host]
        got = [t for h, t in released if h == host]
        closes = [(a.window_ns, a.closed_until_ns(host)) for a in aggs]
        want: list[int] = []
        for t in mine:
            if any(c is None or (t // w + 1) * w > c for w, c in closes):
                break
            want.append(t)
        assert got == want
    assert len(released) + gate.held == len(offsets)


def test_checking_only_the_touched_hosts_releases_the_same_events() -> None:
    aggs_all = [WindowAggregator(2.0, 0.0)]
    aggs_some = [WindowAggregator(2.0, 0.0)]
    gate_all, gate_some = AckGate(aggs_all), AckGate(aggs_some)
    got_all: list[int] = []
    got_some: list[int] = []
    for k in range(12):
        host = "ab"[k % 2]
        s = tick(host, T0 + (k // 2) * S)
        closed: set[str] = set()
        for a, b in zip(aggs_all, aggs_some, strict=True):
            a.add(s)
            closed.update(x.key for x in b.add(s) if x.scope == "host")
        gate_all.hold(host, s.ts_ns, k)
        gate_some.hold(host, s.ts_ns, k)
        got_all += gate_all.releasable()
        got_some += gate_some.releasable({host} | closed)
    assert got_some == got_all and got_all
