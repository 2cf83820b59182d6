"""The learned failure model: shipped weights, their held-out metrics, and max(rules, model)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from accelpilot.detectors.failure_model import FailureModel, shipped
from accelpilot.detectors.failure_rules import FailureRisk
from accelpilot.detectors.failure_traces import TEST_SMALL, TraceSpec, run_traces, trace_scenario
from accelpilot.detectors.failure_train import check_rows, evaluate, markdown_table, train
from accelpilot.errors import ConfigError
from accelpilot.schemas.samples import DeviceEvent, HostSample

DEVS = ["h/gpu0", "h/gpu1", "h/gpu2"]


def sample(t: int, ecc: list[float], temp: list[float] | None = None, events=()) -> HostSample:  # type: ignore[no-untyped-def]
    return HostSample(
        host_id="h", ts_ns=t * 10**9, seq=t, interval_s=1.0, device_ids=DEVS,
        device_kinds=["gpu"] * 3,
        metrics={"temp_c": temp or [60.0, 61.0, 60.5], "ecc_corrected_total": ecc,
                 "throttle_reasons_mask": [0.0, 0.0, 0.0]},
        events=list(events),
    )  # fmt: skip


def recurring_storms(fr: FailureRisk, n_storms: int = 4) -> list[tuple[int, float, float]]:
    """gpu1: ECC storms of 60 s at 50 errors/s every 5 minutes; (t, rules, combined) per s."""
    total = 0.0
    out = []
    for t in range(n_storms * 300):
        if t % 300 < 60:
            total += 50.0
        fr.update(sample(t, [0.0, total, 0.0]))
        out.append((t, float(fr.rules_risk()[1]), float(fr.risk()[1])))
    return out


def test_shipped_weights_load_and_describe_their_training() -> None:
    m = shipped()
    assert m.features and m.horizon_s == 1800.0 and m.threshold == 0.5
    rec = m.record
    assert rec["train"]["seeds"] != rec["test"]["seeds"]
    assert rec["test"]["n_devices"] == 12 and rec["train"]["n_devices"] == "3-8"
    assert any("shipped" in name for name in rec["held_out"])


def test_bad_weights_are_refused_with_a_rebuild_hint(tmp_path: Path) -> None:
    doc = shipped().to_dict()
    for change in ({"format": "pickle"}, {"features": ["a"]}, {"coef": [1.0]},
                   {"scale": [0.0] * len(doc["scale"])}):  # fmt: skip
        p = tmp_path / "m.json"
        p.write_text(json.dumps({**doc, **change}))
        with pytest.raises(ConfigError, match="train-failure"):
            FailureModel.load(p)
    with pytest.raises(ConfigError, match="cannot read"):
        FailureModel.load(tmp_path / "missing.json")


def test_shipped_weights_reproduce_their_recorded_held_out_metrics() -> None:
    """The record's check set (3 held-out 1 h traces of 12 devices) scored again."""
    m = shipped()
    assert m.record["check"]["seeds"] == list(TEST_SMALL.seeds)
    tr = run_traces(TEST_SMALL)
    got = evaluate(tr, check_rows(m, tr), m.horizon_s)
    want = m.record["check"]["metrics"]
    assert got.keys() == want.keys()
    for name in want:
        for k, v in want[name].items():
            assert got[name][k] == pytest.approx(v, abs=0.02), (name, k)


def test_healthy_devices_keep_zero_risk_with_the_model() -> None:
    fr = FailureRisk(DEVS)
    for t in range(600):
        risk, ev = fr.update(sample(t, [0.0, 0.0, 0.0]))
    assert risk.tolist() == [0.0, 0.0, 0.0] and ev == [[], [], []]


def test_recurring_storms_raise_the_model_above_the_rules() -> None:
    fr = FailureRisk(DEVS)
    series = recurring_storms(fr)
    combined = np.array([c for _, _, c in series])
    rules = np.array([r for _, r, _ in series])
    t = np.array([t for t, _, _ in series])
    assert rules.max() < 0.5  # the rules never reach the alert threshold on this pattern
    assert combined[t < 300].max() < 0.5  # one storm alone is no failure sign
    assert combined[t >= 600].min() >= 0.5  # the third storm and after: it is
    assert combined[-1] > combined[t == 700][0]  # and the risk keeps rising
    assert ("model", pytest.approx(combined[-1], abs=1e-3)) in fr.evidence()[1]
    assert fr.risk()[0] == 0.0 and fr.risk()[2] == 0.0


def test_known_fatal_signals_still_fire_at_once() -> None:
    fr = FailureRisk(DEVS)
    fr.update(sample(0, [0.0, 0.0, 0.0]))
    ev = [DeviceEvent(device_id="h/gpu2", kind="xid", code=79, ts_ns=10**9)]
    risk, evidence = fr.update(sample(1, [0.0, 0.0, 0.0], events=ev))
    assert risk[2] >= 0.9 and ("xid", 79.0) in evidence[2]


def test_state_round_trip_keeps_the_model_and_its_features() -> None:
    a = FailureRisk(DEVS)
    recurring_storms(a, 2)
    b = FailureRisk.from_state(a.get_state())
    assert b.model is not None and a.model is not None
    assert {**b.model.to_dict(), "record": {}} == {**a.model.to_dict(), "record": {}}
    total = 100 * 50.0
    for t in range(600, 700):
        total += 50.0
        ra, _ = a.update(sample(t, [0.0, total, 0.0]))
        rb, _ = b.update(sample(t, [0.0, total, 0.0]))
        assert ra.tolist() == rb.tolist()
    # Rules-only stays rules-only.
    c = FailureRisk.from_state(FailureRisk(DEVS, model=None).get_state())
    assert c.model is None
    with pytest.raises(ConfigError, match="None for the rules alone"):
        FailureRisk(DEVS, model="newest")


def test_a_v1_checkpoint_loads_with_the_shipped_model() -> None:
    old = msgspec.msgpack.decode(FailureRisk(DEVS, model=None).get_state())
    for k in ("model", "features", "model_risk"):
        old.pop(k)
    old["v"] = 1
    fr = FailureRisk.from_state(msgspec.msgpack.encode(old))
    assert fr.model is shipped() and len(fr.features) == 3
    fr.update(sample(0, [0.0, 0.0, 0.0]))


def test_sim_traces_label_failures_after_their_chain() -> None:
    sc, fail_s = trace_scenario(5000, 10800.0, 12)
    off = {f.device: f.at_s for f in sc.faults if f.type == "off_bus"}
    assert {sc.device_ids[i]: fail_s[i] for i in np.flatnonzero(np.isfinite(fail_s))} == off


@pytest.mark.slow
def test_training_pipeline_writes_a_loadable_model(tmp_path: Path) -> None:
    """`detect train-failure` end to end on a few short traces (the real run takes minutes)."""
    out = tmp_path / "m.json"
    record = train(
        out,
        train_spec=TraceSpec((1000, 1001, 1002, 1003), 1800.0, 6),
        test_spec=TraceSpec((5000,), 1800.0, 6),
        check_spec=TraceSpec((5001,), 1800.0, 6),
    )
    m = FailureModel.load(out)
    assert m.record == json.loads(json.dumps(record))
    assert m.record["check"]["seeds"] == [5001] and m.record["train"]["traces"] == 4
    assert "| risk |" in markdown_table(record["held_out"])
