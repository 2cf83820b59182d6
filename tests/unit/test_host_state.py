"""The per-host record of windows already written, and a replay that starts inside them."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import WorkerSettings
from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.samples import HostSample
from accelpilot.streams.aggregates import WindowAggregator
from accelpilot.streams.batch_stages import BatchStages
from accelpilot.streams.host_state import (
    HostRecord,
    decode_record,
    encode_record,
    merged,
    window_key,
    written_windows,
)

T0 = 1_700_000_040 * 10**9 // (60 * 10**9) * 60 * 10**9  # on a minute


def _host_windows(out: list[Aggregate]) -> list[tuple[str, float, int]]:
    return [(a.key, a.window_s, a.window_start_ns) for a in out if a.scope == "host"]


def test_record_round_trip_and_lookup() -> None:
    record = HostRecord(written_ns={window_key(10.0): 5, window_key(60): 7})
    back = decode_record(encode_record(record))
    assert back == record
    assert back.written_until_ns(10) == 5
    assert back.written_until_ns(60.0) == 7
    assert back.written_until_ns(1.0) is None


@given(st.lists(st.tuples(st.sampled_from(["10.0", "60.0"]), st.integers(0, 10**6)), max_size=8))
def test_merged_never_moves_a_record_back(updates: list[tuple[str, int]]) -> None:
    record: HostRecord | None = None
    for k, end in updates:
        new = merged(record, {k: end})
        before = {} if record is None else record.written_ns
        if new is None:
            assert before.get(k, -1) >= end
        else:
            assert new.written_ns[k] == max(before.get(k, -1), end)
            assert {x: v for x, v in new.written_ns.items() if x != k} == {
                x: v for x, v in before.items() if x != k
            }
            record = new


def test_written_windows_keeps_the_latest_host_window_per_size() -> None:
    agg = WindowAggregator(10.0, 0.0)
    out = [
        a for s in synthetic_samples("h1", n_devices=2, n_ticks=35, start_ns=T0) for a in agg.add(s)
    ]
    assert written_windows(out) == {"h1": {window_key(10.0): T0 + 30 * 10**9}}


def test_resume_host_drops_samples_of_written_windows() -> None:
    agg = WindowAggregator(10.0, 0.0)
    agg.resume_host("h1", T0 + 20 * 10**9)
    assert agg.closed_until_ns("h1") == T0 + 20 * 10**9
    out = [
        a for s in synthetic_samples("h1", n_devices=1, n_ticks=35, start_ns=T0) for a in agg.add(s)
    ]
    assert [w[2] for w in _host_windows(out)] == [T0 + 20 * 10**9]
    assert agg.late_dropped_total == 20


def test_a_replay_from_inside_a_written_window_does_not_rewrite_it() -> None:
    """A worker wrote [60 s, 120 s) and died with the committed offset at 91 s; its successor,
    given the host's record, drops 91..119 s (acking them) instead of writing the window
    again from those samples alone, and writes the next windows complete."""
    w = WorkerSettings(windows_s=(10.0, 60.0), allowed_lateness_s=0.0, close_spread_s=0.0)
    samples = list(synthetic_samples("h1", n_devices=2, n_ticks=200, start_ns=T0))
    raws = [codec.encode(s) for s in samples]
    now = T0 + 200 * 10**9
    first = BatchStages(w, clock=lambda: now)
    out = first.run(raws[:141], list(range(141)), now)
    record = merged(None, written_windows(out.aggregates)["h1"])
    assert record is not None and record.written_until_ns(60) == T0 + 120 * 10**9

    second = BatchStages(w, clock=lambda: now, host_record={"h1": record}.get)
    replay = second.run(raws[91:], list(range(91, 200)), now)
    rewritten = [k for k in _host_windows(replay.aggregates) if k[2] < T0 + 120 * 10**9]
    assert rewritten == []
    assert set(range(91, 120)) <= set(replay.releasable)  # their windows are written
    full = BatchStages(w, clock=lambda: now).run(raws, list(range(200)), now)
    later = {(a.key, a.window_s, a.window_start_ns): a.sample_count for a in full.aggregates}
    for a in replay.aggregates:
        assert later[(a.key, a.window_s, a.window_start_ns)] == a.sample_count


def test_reset_windows_looks_the_records_up_again() -> None:
    w = WorkerSettings(windows_s=(10.0,), allowed_lateness_s=0.0, close_spread_s=0.0)
    records: dict[str, HostRecord] = {}
    stages = BatchStages(w, clock=lambda: T0, host_record=records.get)
    raws = [codec.encode(s) for s in synthetic_samples("h1", n_devices=1, n_ticks=30, start_ns=T0)]
    stages.run(raws[:5], list(range(5)), T0)
    records["h1"] = HostRecord(written_ns={window_key(10.0): T0 + 20 * 10**9})
    stages.reset_windows()
    out = stages.run(raws[5:], list(range(5, 30)), T0)
    assert _host_windows(out.aggregates) == []  # 5..19 s written before, 20..29 s still open
    assert stages.aggregators[0].late_dropped_total == 15


def _hot(samples: list[HostSample], ticks: range) -> list[HostSample]:
    """``samples`` with gpu0 at 95 degC during ``ticks`` (a thermal fault)."""
    out = []
    for k, s in enumerate(samples):
        if k in ticks:
            temp = list(s.metrics["temp_c"])
            temp[0] = 95.0
            s = msgspec.structs.replace(s, metrics={**s.metrics, "temp_c": temp})
        out.append(s)
    return out


def test_an_open_alert_episode_moves_with_the_host_record() -> None:
    """The worker that detected a thermal episode dies with it open; its successor, given the
    host's record, goes on with the same episode (one id, resolved once) and does not detect
    the replayed samples again."""
    w = WorkerSettings(windows_s=(10.0,), allowed_lateness_s=0.0, close_spread_s=0.0)
    samples = list(synthetic_samples("h1", n_devices=2, n_ticks=80, start_ns=T0))
    samples = _hot(samples, range(30, 50))
    raws = [codec.encode(s) for s in samples]
    now = T0 + 80 * 10**9
    first = BatchStages(w, clock=lambda: now)
    out = first.run(raws[:40], list(range(40)), now)
    fired = [a for a in out.alerts if a.kind == "thermal"]
    assert [a.state for a in fired] == ["firing"]
    detection, observed = first.detection_states(["h1"])["h1"]
    assert observed == samples[39].ts_ns
    record = merged(None, written_windows(out.aggregates)["h1"], detection, observed)
    assert record is not None and record.observed_ns == observed

    second = BatchStages(w, clock=lambda: now, host_record={"h1": record}.get)
    # From the committed offset, inside the episode (its first samples were committed).
    replay = second.run(raws[35:], list(range(35, 80)), now)
    thermal = [a for a in replay.alerts if a.kind == "thermal"]
    assert [(a.state, a.id) for a in thermal] == [("resolved", fired[0].id)]
    assert all(a.ts_ns > observed for a in replay.anomalies)  # 35..39 s not detected again

    # Without the record: the same replay reports the episode again under another id.
    cold = BatchStages(w, clock=lambda: now).run(raws[35:], list(range(35, 80)), now)
    again = [a for a in cold.alerts if a.kind == "thermal" and a.state == "firing"]
    assert again and again[0].id != fired[0].id


@pytest.mark.parametrize("new_owner", ["fresh", "running"])
@pytest.mark.parametrize("detector", ["robust", "novelty", "ensemble"])
def test_the_detectors_learned_state_moves_with_the_host_record(
    new_owner: str, detector: str
) -> None:
    """A host handed over after 60 samples: its new owner (a worker that has seen nothing yet,
    or one whose slots are laid out differently) scores the next samples exactly as the old
    owner does, a power spike 5 samples after the handover included; a monitor starting cold
    is still warming up and misses it."""
    from accelpilot.streams.alerting import DetectorSpec, DeviceMonitor

    specs = (DetectorSpec("power_w", detector), DetectorSpec("temp_c"))
    samples = list(synthetic_samples("h1", n_devices=3, n_ticks=80, start_ns=T0))
    spike = samples[65]
    power = list(spike.metrics["power_w"])
    power[1] = power[1] * 3 + 200.0
    samples[65] = msgspec.structs.replace(spike, metrics={**spike.metrics, "power_w": power})
    old = DeviceMonitor(specs)
    for s in samples[:60]:
        old.observe(s)
    new, cold = DeviceMonitor(specs), DeviceMonitor(specs)
    if new_owner == "running":
        for other in synthetic_samples("h0", n_devices=5, n_ticks=3, start_ns=T0):
            new.observe(other)  # h1's devices get other slots here
    new.restore_host("h1", old.host_state("h1"))

    def scores(mon: DeviceMonitor) -> list[tuple[str, str, int, float]]:
        got = []
        for s in samples[60:]:
            anomalies, _ = mon.observe(s)
            got += [(a.detector, a.device_id, a.ts_ns, round(a.score, 12)) for a in anomalies]
        return got

    expected = scores(old)
    assert scores(new) == expected
    # Beyond what is reported: every learned number of h1's devices is the old owner's.
    rows_old = old.host_states(["h1"])["h1"]
    assert msgspec.msgpack.decode(new.host_states(["h1"])["h1"]) == msgspec.msgpack.decode(rows_old)
    if detector == "robust":  # (novelty is still in its probation at 65 samples)
        assert any(dev == "h1/gpu1" and ts == samples[65].ts_ns for _, dev, ts, _ in expected)
        assert not any(ts == samples[65].ts_ns for _, _, ts, _ in scores(cold))


def test_a_record_of_other_detectors_leaves_them_to_warm_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from accelpilot.streams.alerting import DetectorSpec, DeviceMonitor

    samples = list(synthetic_samples("h1", n_devices=2, n_ticks=40, start_ns=T0))
    old = DeviceMonitor()
    for s in samples:
        old.observe(s)
    other = DeviceMonitor(detectors=(DetectorSpec("temp_c"),))
    with caplog.at_level("WARNING", logger="accelpilot.streams.alerting"):
        other.restore_host("h1", old.host_state("h1"))
    assert "h1: detectors configured differently" in caplog.text
    other.observe(samples[-1])
    slots = [other.slots[d] for d in samples[0].device_ids]
    assert other.detectors.dets[0].stats.count[slots].max() == 1  # one sample: warming up


def test_a_detector_whose_state_does_not_fit_gets_none_of_it() -> None:
    """All of a detector's rows, or none: one array of the new owner's power detector that
    cannot take them (here: read-only) leaves that whole detector to warm up, while the
    temperature detector beside it gets its rows."""
    from accelpilot.streams.alerting import DeviceMonitor

    samples = list(synthetic_samples("h1", n_devices=2, n_ticks=40, start_ns=T0))
    old, new = DeviceMonitor(), DeviceMonitor()
    for s in samples:
        old.observe(s)
    new.observe(samples[0])
    new.detectors.prime()  # (restore_host would: its all-absent call makes new arrays)
    power_new, temp_new = new.detectors.dets[:2]
    power_old, temp_old = old.detectors.dets[:2]
    before = power_new.stats.loc.copy()
    power_new.stats.count.flags.writeable = False
    new.restore_host("h1", old.host_state("h1"))
    so = [old.slots[d] for d in samples[0].device_ids]
    sn = [new.slots[d] for d in samples[0].device_ids]
    assert (temp_new.stats.loc[sn] == temp_old.stats.loc[so]).all()
    assert (power_new.stats.loc == before).all()
    assert not (power_new.stats.loc[sn] == power_old.stats.loc[so]).all()


def test_host_states_of_no_host_or_an_unknown_one() -> None:
    from accelpilot.streams.alerting import DeviceMonitor

    mon = DeviceMonitor()
    assert mon.host_states([]) == {}
    state = mon.host_states(["never-seen"])["never-seen"]
    fresh = DeviceMonitor()
    fresh.restore_host("never-seen", state)  # nothing to put back, nothing breaks
    assert fresh.host_devices.get("never-seen", []) == []


@pytest.mark.parametrize("detector", ["robust", "ensemble"])
def test_growing_the_detectors_keeps_what_they_learned(detector: str) -> None:
    """A monitor whose slots run out grows its detectors; the devices it knew go on scoring as
    in a monitor that never had to grow (an ensemble's members included)."""
    from accelpilot.streams.alerting import DetectorSpec, DeviceMonitor

    specs = (DetectorSpec("power_w", detector),)
    h1 = list(synthetic_samples("h1", n_devices=2, n_ticks=70, start_ns=T0))
    spike = h1[65]
    power = [spike.metrics["power_w"][0], spike.metrics["power_w"][1] * 3 + 200.0]
    h1[65] = msgspec.structs.replace(spike, metrics={**spike.metrics, "power_w": power})
    h2 = list(synthetic_samples("h2", n_devices=2, n_ticks=1, start_ns=T0 + 60 * 10**9))
    small, big = DeviceMonitor(specs, capacity=2), DeviceMonitor(specs, capacity=64)
    for mon in (small, big):
        for s in h1[:60]:
            mon.observe(s)
        mon.observe(h2[0])
    assert small.detectors.capacity > 2

    def scores(mon: DeviceMonitor) -> list[tuple[str, int, float]]:
        return [
            (a.device_id, a.ts_ns, round(a.score, 12)) for s in h1[60:] for a in mon.observe(s)[0]
        ]

    expected = scores(big)
    assert expected and scores(small) == expected


def test_restoring_a_rebalances_hosts_together_is_restoring_each() -> None:
    """``restore_hosts`` (what the worker does for a batch's new hosts) puts back what
    ``restore_host`` of each does: the next scores and every learned number are the same."""
    from accelpilot.streams.alerting import DeviceMonitor

    hosts = ["h1", "h2", "h3"]
    ticks = {h: list(synthetic_samples(h, n_devices=2, n_ticks=60, start_ns=T0, seed=i))
             for i, h in enumerate(hosts)}  # fmt: skip
    old = DeviceMonitor()
    for k in range(40):
        old.observe_batch([ticks[h][k] for h in hosts])
    states = old.host_states(hosts)
    together, each = DeviceMonitor(), DeviceMonitor()
    together.restore_hosts(states)
    for h in hosts:
        each.restore_host(h, states[h])

    def scores(mon: DeviceMonitor) -> list[tuple[str, str, int, float]]:
        got = []
        for k in range(40, 60):
            anomalies, _ = mon.observe_batch([ticks[h][k] for h in hosts])
            got += [(a.detector, a.device_id, a.ts_ns, a.score) for a in anomalies]
        return got

    assert scores(together) == scores(each)
    assert together.host_states(hosts) == each.host_states(hosts)
    assert together.risk.get_state() == each.risk.get_state()


def test_the_states_of_several_hosts_taken_together_are_each_hosts_own() -> None:
    """``host_states`` reads the alert engine's and the failure-risk arrays once for all the
    hosts asked (what the worker does for a batch's written hosts); each host gets the bytes it
    would get alone, an open episode (h2's thermal alert) included."""
    from accelpilot.streams.alerting import DeviceMonitor

    hosts = ["h1", "h2", "h3"]
    ticks = {h: list(synthetic_samples(h, n_devices=3, n_ticks=40, start_ns=T0, seed=i))
             for i, h in enumerate(hosts)}  # fmt: skip
    for k in range(25, 40):  # h2/gpu1 runs hot: a thermal episode is open at the end
        s = ticks["h2"][k]
        temp = [s.metrics["temp_c"][0], 96.0, s.metrics["temp_c"][2]]
        ticks["h2"][k] = msgspec.structs.replace(s, metrics={**s.metrics, "temp_c": temp})
    mon = DeviceMonitor()
    for k in range(40):
        mon.observe_batch([ticks[h][k] for h in hosts])
    together = mon.host_states([*hosts, "never-seen"])
    assert together == {h: mon.host_states([h])[h] for h in [*hosts, "never-seen"]}
    engine = {
        h: msgspec.msgpack.decode(msgspec.msgpack.decode(together[h])["engine"]) for h in hosts
    }
    assert engine["h2"]["devices"]["h2/gpu1"]["thermal"]["firing"] is True
    assert "h2/gpu1" not in engine["h1"]["devices"] and engine["h2"]["hosts"]["h2/gpu1"] == "h2"
