"""AlertEngine: hysteresis without flapping, deterministic ids, state round-trip."""

from __future__ import annotations

import doctest

import msgspec
import numpy as np

from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.samples import DeviceEvent, HostSample
from accelpilot.streams import alerting
from accelpilot.streams.alerting import AlertConfig, AlertEngine, DeviceMonitor, DeviceSignals

DEVS = ["n/gpu0", "n/gpu1"]


def signals(t: int, temp=(60.0, 60.0), mask=(0, 0), rep=(True, True), xid=(0, 0),  # type: ignore[no-untyped-def]
            ecc=(0.0, 0.0), risk=(0.0, 0.0), score=None) -> DeviceSignals:  # fmt: skip
    return DeviceSignals.for_host(
        "n", DEVS, t * 10**9, 1.0,
        reporting=np.array(rep), temp_c=np.array(temp, float),
        throttle_mask=np.array(mask, np.int64), xid_code=np.array(xid, np.int64),
        ecc_corrected_per_min=np.array(ecc, float), ecc_uncorrected_new=np.zeros(2),
        risk=np.array(risk, float),
        scores={} if score is None else {("robust", "power_w"): np.array(score, float)},
    )  # fmt: skip


def run(engine: AlertEngine, sigs: list[DeviceSignals]) -> list[Alert]:
    out: list[Alert] = []
    for s in sigs:
        out += engine.update(s)[1]
    return out


def test_doctests() -> None:
    assert doctest.testmod(alerting).failed == 0


def test_no_flapping_on_a_signal_oscillating_around_the_threshold() -> None:
    cfg = AlertConfig()
    # 84/86 around the 85 degC warning line, never below the 80 degC clear line.
    temps = [84.0 if t % 2 else 86.0 for t in range(200)]
    alerts = run(AlertEngine(cfg), [signals(t, temp=(temps[t], 60.0)) for t in range(200)])
    assert alerts == []  # never 2 consecutive samples >= 85
    temps = [86.0, 86.0] + [84.0 if t % 2 else 86.0 for t in range(200)] + [70.0] * 10
    alerts = run(AlertEngine(cfg), [signals(t, temp=(x, 60.0)) for t, x in enumerate(temps)])
    assert [(a.state, a.severity) for a in alerts] == [
        ("firing", "warning"),
        ("resolved", "warning"),
    ]
    assert alerts[0].id == alerts[1].id
    assert alerts[1].ts_ns == (202 + cfg.thermal.k_off - 1) * 10**9


def test_thermal_reason_severity_and_escalation() -> None:
    seq = [signals(t, temp=(86.0, 60.0)) for t in range(3)]
    seq += [signals(3 + t, temp=(91.2, 60.0), mask=(0x40, 0)) for t in range(5)]
    alerts = run(AlertEngine(), seq)
    assert [a.severity for a in alerts] == ["warning", "critical"]
    assert len({a.id for a in alerts}) == 1  # one episode, escalated
    assert "n/gpu0 temp_c 91.2 °C ≥ 90 °C" in alerts[1].reason
    assert "throttle: HW thermal slowdown" in alerts[1].reason


def test_silence_xid_ecc_risk_and_anomaly_channels() -> None:
    seq = [signals(0)]
    seq += [signals(t, rep=(True, False), temp=(60.0, np.nan)) for t in range(1, 4)]
    seq += [signals(4, xid=(0, 79), ecc=(50.0, 0.0), risk=(0.0, 0.9))]
    seq += [signals(t, ecc=(50.0, 0.0), risk=(0.0, 0.9), score=(0.0, 0.95)) for t in range(5, 12)]
    alerts = run(AlertEngine(), seq)
    got = {(a.kind, a.device_id, a.state, a.severity) for a in alerts}
    assert ("device_silent", "n/gpu1", "firing", "critical") in got
    assert ("device_silent", "n/gpu1", "resolved", "critical") in got
    assert ("xid", "n/gpu1", "firing", "critical") in got
    assert ("ecc", "n/gpu0", "firing", "warning") in got
    assert ("failure_risk", "n/gpu1", "firing", "critical") in got
    assert ("anomaly", "n/gpu1", "firing", "warning") in got


def test_app_level_xid_is_info() -> None:
    alerts = run(AlertEngine(), [signals(0, xid=(13, 0))])
    assert [(a.kind, a.severity) for a in alerts] == [("xid", "info")]


def test_anomaly_payloads_above_the_floor_have_deterministic_ids() -> None:
    eng = AlertEngine()
    an, _ = eng.update(signals(0, score=(0.2, 0.7)))
    assert [a.device_id for a in an] == ["n/gpu1"]
    an2, _ = AlertEngine().update(signals(0, score=(0.2, 0.7)))
    assert an2 == an


def samples(n: int = 80) -> list[HostSample]:
    rng = np.random.default_rng(3)
    out = []
    for t in range(n):
        temp = [65.0 + rng.normal(), 92.0 if 20 <= t < 50 else 70.0]
        off = 30 <= t < 40
        events = [DeviceEvent(device_id="n/gpu2", kind="xid", code=79, ts_ns=t)] if t == 40 else []
        out.append(
            HostSample(
                host_id="n", ts_ns=10**18 + t * 10**9, seq=t, interval_s=1.0,
                device_ids=["n/gpu0", "n/gpu1", "n/gpu2"], device_kinds=["gpu"] * 3,
                metrics={
                    "power_w": [300 + rng.normal(), 300 + rng.normal(), None if off else 300.0],
                    "temp_c": [*temp, None if off else 60.0],
                    "util_compute_pct": [90.0, 90.0, None if off else 90.0],
                    "throttle_reasons_mask": [0.0, 64.0 * (20 <= t < 50), None if off else 0.0],
                },
                events=events,
            )
        )  # fmt: skip
    return out


def test_replay_gives_identical_payloads() -> None:
    def go() -> bytes:
        mon = DeviceMonitor()
        out = []
        for s in samples():
            out.append(mon.observe(s))
        return msgspec.json.encode(out)

    a, b = go(), go()
    assert a == b
    kinds = {x["kind"] for tick in msgspec.json.decode(a) for x in tick[1]}
    assert {"thermal", "device_silent", "xid"} <= kinds


def test_monitor_state_round_trip_mid_stream() -> None:
    seq = samples()
    a = DeviceMonitor()
    for s in seq[:35]:  # mid-episode: gpu1 hot, gpu2 silent
        a.observe(s)
    b = DeviceMonitor.from_state(a.get_state())
    for s in seq[35:]:
        assert a.observe(s) == b.observe(s)


def test_engine_state_is_keyed_by_device() -> None:
    eng = AlertEngine()
    run(eng, [signals(t, temp=(95.0, 60.0)) for t in range(3)])
    state = msgspec.msgpack.decode(eng.get_state())
    assert set(state["devices"]) == set(DEVS)
    assert state["devices"]["n/gpu0"]["thermal"]["firing"] is True
    eng2 = AlertEngine.from_state(eng.get_state())
    assert run(eng2, [signals(3 + t, temp=(60.0, 60.0)) for t in range(5)])[0].state == "resolved"


def test_devices_appearing_grow_the_detectors() -> None:
    mon = DeviceMonitor(capacity=2)
    for t in range(40):
        devs = [f"n/gpu{i}" for i in range(2 if t < 20 else 5)]
        s = HostSample(
            host_id="n", ts_ns=t * 10**9, seq=t, interval_s=1.0, device_ids=devs,
            device_kinds=["gpu"] * len(devs),
            metrics={"power_w": [300.0 + (t % 2)] * len(devs), "temp_c": [60.0] * len(devs)},
        )  # fmt: skip
        _, alerts = mon.observe(s)
        assert not [a for a in alerts if a.severity == "critical"]
    assert mon.detectors.capacity >= 5
    # Devices that vanish from the host's samples go silent.
    s = HostSample(host_id="n", ts_ns=40 * 10**9, seq=40, interval_s=1.0, device_ids=["n/gpu0"],
                   device_kinds=["gpu"], metrics={"power_w": [300.0]})  # fmt: skip
    for k in range(3):
        s = msgspec.structs.replace(s, ts_ns=(40 + k) * 10**9, seq=40 + k)
        _, alerts = mon.observe(s)
    assert {a.device_id for a in alerts if a.kind == "device_silent"} == {
        f"n/gpu{i}" for i in range(1, 5)
    }


def test_a_host_slice_carries_an_open_episode_to_another_engine() -> None:
    """A host's next owner goes on with the same episode (same id), not a new one."""
    old = AlertEngine()
    fired = run(old, [signals(t, temp=(95.0, 60.0)) for t in range(3)])
    assert [a.state for a in fired] == ["firing"]
    devs = ["n/gpu0", "n/gpu1"]
    state = old.host_state("n", devs)
    saved = msgspec.msgpack.decode(state)
    assert set(saved["devices"]) == {"n/gpu0"}  # gpu1 is at rest everywhere: not saved
    new = AlertEngine()
    run(new, [signals(t, temp=(60.0, 60.0)) for t in range(2)])  # the new owner saw n before
    new.restore_host("n", state, devs)
    # The fault goes on, then ends: no second "firing", the resolve has the first id.
    later = run(new, [signals(3 + t, temp=(95.0, 60.0)) for t in range(5)])
    later += run(new, [signals(8 + t, temp=(60.0, 60.0)) for t in range(5)])
    assert [a.state for a in later] == ["resolved"]
    assert later[0].id == fired[0].id
    assert old.host_state("n", []) == AlertEngine().host_state("n", devs)  # empty slices


def test_restoring_a_host_puts_its_other_channels_at_rest() -> None:
    eng = AlertEngine()
    run(eng, [signals(t, temp=(60.0, 95.0)) for t in range(3)])  # gpu1 firing here
    rest = AlertEngine()
    run(rest, [signals(t, temp=(60.0, 60.0)) for t in range(3)])
    devs = ["n/gpu0", "n/gpu1"]
    eng.restore_host("n", rest.host_state("n", devs), devs)  # the saved slice: nothing open
    assert run(eng, [signals(3 + t, temp=(60.0, 60.0)) for t in range(5)]) == []
