"""Every failure rule fires on its trigger, stays quiet otherwise, and state round-trips."""

from __future__ import annotations

import doctest

import msgspec
import numpy as np
import pytest

from accelpilot.detectors import failure_rules
from accelpilot.detectors.failure_rules import RULES, XID_WEIGHTS, FailureRisk
from accelpilot.schemas.samples import DeviceEvent, HostSample

DEVS = ["h/gpu0", "h/gpu1"]


def rules_only(*args, **kw) -> FailureRisk:  # type: ignore[no-untyped-def]
    """The rules without the learned model (test_failure_model.py covers the combination)."""
    return FailureRisk(*args, model=None, **kw)


def sample(t: int, metrics: dict, events=(), devs=DEVS) -> HostSample:  # type: ignore[no-untyped-def]
    return HostSample(
        host_id="h", ts_ns=t * 10**9, seq=t, interval_s=1.0, device_ids=list(devs),
        device_kinds=["gpu"] * len(devs), metrics=metrics, events=list(events),
    )  # fmt: skip


def healthy(t: int, **over) -> HostSample:  # type: ignore[no-untyped-def]
    m = {
        "temp_c": [60.0, 60.0], "throttle_reasons_mask": [0.0, 0.0],
        "ecc_corrected_total": [0.0, 0.0], "ecc_uncorrected_total": [0.0, 0.0],
        "retired_pages_total": [0.0, 0.0], "remapped_rows_total": [0.0, 0.0],
    }  # fmt: skip
    m.update(over)
    return sample(t, m)


def rules_of(evidence: list) -> set[str]:  # type: ignore[type-arg]
    return {r for r, _ in evidence}


def test_docstring_runs_and_lists_every_rule() -> None:
    assert doctest.testmod(failure_rules).failed == 0
    for r in RULES:
        assert f"``{r}``" in failure_rules.__doc__
    for code in XID_WEIGHTS:
        assert f"\n{code} " in failure_rules.__doc__


def test_healthy_devices_have_zero_risk() -> None:
    fr = rules_only(DEVS)
    for t in range(50):
        risk, ev = fr.update(healthy(t))
    assert risk.tolist() == [0.0, 0.0] and ev == [[], []]


@pytest.mark.parametrize(
    ("code", "low", "high"), [(79, 0.85, 0.95), (48, 0.5, 0.7), (95, 0.7, 0.9), (13, 0.0, 0.1)]
)
def test_xid_weights_and_decay(code: int, low: float, high: float) -> None:
    fr = rules_only(DEVS, horizon_s=100.0)
    fr.update(healthy(0))
    ev = [DeviceEvent(device_id="h/gpu1", kind="xid", code=code, ts_ns=0)]
    risk, evidence = fr.update(sample(1, {"temp_c": [60.0, 60.0]}, ev))
    assert risk[0] == 0 and low <= risk[1] <= high
    assert evidence[1] == [("xid", float(code))]
    risk, _ = fr.update(sample(101, {"temp_c": [60.0, 60.0]}))  # one half-life later
    assert risk[1] == pytest.approx(XID_WEIGHTS[code] / 2, rel=0.02)


def test_counter_rules_fire_on_increase_only() -> None:
    for metric, rule in [
        ("ecc_uncorrected_total", "ecc_uncorrected"),
        ("retired_pages_total", "retired_pages"),
        ("remapped_rows_total", "remapped_rows"),
    ]:
        fr = rules_only(DEVS)
        fr.update(healthy(0, **{metric: [5.0, 5.0]}))  # history before we watched: ignored
        risk, ev = fr.update(healthy(1, **{metric: [5.0, 6.0]}))
        assert risk[0] == 0 and risk[1] > 0.2 and rule in rules_of(ev[1]), metric
        risk2, _ = fr.update(healthy(2, **{metric: [0.0, 0.0]}))  # reset rebases, no count
        assert risk2[1] <= risk[1]


def test_corrected_ecc_rate_trend() -> None:
    fr = rules_only(DEVS, ecc_rate_bound_per_min=10.0)
    total = 0.0
    for t in range(30):  # gpu0: 1 per minute-ish (below bound); gpu1: 50/s
        total += 50.0
        risk, ev = fr.update(healthy(t, ecc_corrected_total=[t / 60.0, total]))
    assert risk[0] == 0 and "ecc_corrected_rate" in rules_of(ev[1])
    assert dict(ev[1])["ecc_corrected_rate"] > 1000  # per minute
    assert risk[1] == pytest.approx(0.4)


def test_thermal_and_throttle_history() -> None:
    fr = rules_only(DEVS)
    for t in range(100):
        risk, ev = fr.update(healthy(t, temp_c=[60.0, 92.0], throttle_reasons_mask=[4.0, 64.0]))
    assert risk[0] == 0  # SW power cap (0x4) is not a risk
    assert {"thermal", "throttle_hw"} <= rules_of(ev[1])
    assert 0.3 < risk[1] < 0.4


def test_silent_device_while_host_reports() -> None:
    fr = rules_only(DEVS, silent_intervals=3)
    fr.update(healthy(0))
    for t in range(1, 3):
        risk, _ = fr.update(sample(t, {"temp_c": [60.0, None]}))
    assert risk[1] == 0  # 2 silent samples: not yet
    risk, ev = fr.update(sample(3, {"temp_c": [60.0, None]}))
    assert risk[1] == pytest.approx(0.3) and ev[1] == [("silent", 3.0)]
    # A device missing from the sample altogether counts too.
    risk, ev = fr.update(sample(4, {"temp_c": [60.0]}, devs=["h/gpu0"]))
    assert dict(ev[1])["silent"] == 4.0


def test_missed_samples_count_as_intervals() -> None:
    fr = rules_only(DEVS, silent_intervals=3)
    fr.update(healthy(0))
    _, ev = fr.update(sample(5, {"temp_c": [60.0, None]}))  # 5 intervals later
    assert dict(ev[1])["silent"] == 5.0


def test_events_ecc_throttle_fault() -> None:
    fr = rules_only(DEVS)
    ev = [
        DeviceEvent(device_id="h/gpu0", kind="ecc", code=1, ts_ns=0),
        DeviceEvent(device_id="h/gpu1", kind="fault", code=7, ts_ns=0),
        DeviceEvent(device_id="h/unknown", kind="xid", code=79, ts_ns=0),
    ]
    risk, evidence = fr.update(sample(0, {"temp_c": [60.0, 60.0]}, ev))
    assert rules_of(evidence[0]) == {"ecc_uncorrected"} and risk[0] == pytest.approx(0.7)
    assert rules_of(evidence[1]) == {"fault_event"}


def _varied_streams(seed: int) -> list[HostSample]:
    """60 ticks of host ``h``: random temperatures, climbing ECC counters, periodic throttling."""
    rng = np.random.default_rng(seed)
    return [
        healthy(t, temp_c=list(rng.uniform(60, 95, 2)),
                ecc_corrected_total=[float(t), float(40 * t)],
                throttle_reasons_mask=[0.0, 64.0 * (t % 3 == 0)])
        for t in range(60)
    ]  # fmt: skip


def test_state_round_trip_mid_stream() -> None:
    streams = _varied_streams(seed=0)
    a = rules_only(DEVS)
    for s in streams[:30]:
        a.update(s)
    b = FailureRisk.from_state(a.get_state())
    for s in streams[30:]:
        ra, ea = a.update(s)
        rb, eb = b.update(s)
        assert ra.tolist() == rb.tolist() and ea == eb


def test_devices_appear() -> None:
    fr = FailureRisk(["h/gpu0"])
    risk, _ = fr.update(healthy(0))
    assert fr.device_ids == DEVS and risk.shape == (2,)


def test_a_host_slice_scores_on_elsewhere_as_before() -> None:
    """A host's next owner, given its slice, scores it exactly as the previous owner would
    have, even though it already knew other hosts (other rows)."""
    streams = _varied_streams(seed=1)
    a = FailureRisk(DEVS)
    for s in streams[:30]:
        a.update(s)
    b = FailureRisk(["x/gpu0", "x/gpu1", "x/gpu2"])  # the new owner, other rows first
    b.restore_host("h", a.host_state("h", DEVS))
    rows = [b.index[d] for d in DEVS]
    for s in streams[30:]:
        ra, ea = a.update(s)
        rb, eb = b.update(s)
        assert ra.tolist() == rb[rows].tolist() and ea == [eb[i] for i in rows]


def test_add_hosts_lays_out_rows_as_one_call_per_host_would() -> None:
    """Several hosts at once (a fleet's first tick, a rebalance's restore) give every device
    the row, host and host code that one add_devices per host, in the same order, gives."""
    hosts = [("a", ["a/0", "a/1"]), ("b", ["b/0"]), ("a", ["a/1", "a/2"]), ("c", []),
             ("d", ["b/0", "d/0", "d/0"])]  # fmt: skip
    one, each = FailureRisk(["x/0"]), FailureRisk(["x/0"])
    one.add_hosts(hosts)
    for host, devs in hosts:
        each.add_devices(devs, host)
    assert one.device_ids == each.device_ids == ["x/0", "a/0", "a/1", "b/0", "a/2", "d/0"]
    assert one.host_ids == each.host_ids
    assert one._host_code.tolist() == each._host_code.tolist()
    for name in (*FailureRisk._ROW_ARRAYS, "model_risk", "new_uncorrected", "xid_code"):
        a, b = getattr(one, name), getattr(each, name)
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), name
    assert np.array_equal(one.features.state, each.features.state, equal_nan=True)


def test_restore_hosts_puts_back_what_restore_host_does_for_each() -> None:
    a = FailureRisk([])
    devices = {h: [f"{h}/gpu0", f"{h}/gpu1"] for h in ("h", "g")}
    for s_h, s_g in zip(_varied_streams(seed=0)[:30], _varied_streams(seed=1)[:30], strict=True):
        a.update(s_h)
        a.update(msgspec.structs.replace(s_g, host_id="g", device_ids=devices["g"]))
    states = [(h, a.host_state(h, devs)) for h, devs in devices.items()]
    together, one_by_one = FailureRisk(["x/0"]), FailureRisk(["x/0"])
    together.restore_hosts(states)
    for h, st in states:
        one_by_one.restore_host(h, st)
    assert together.get_state() == one_by_one.get_state()
    assert together.device_ids == ["x/0", *devices["h"], *devices["g"]]
