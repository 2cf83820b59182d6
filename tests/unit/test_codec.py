"""Every topic payload survives the wire; no input makes decode raise anything but a SchemaError."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accelpilot.errors import DecodeError, SchemaError, UnsupportedVersionError
from accelpilot.schemas import (
    Action,
    ActionResult,
    AgentHealth,
    Aggregate,
    Alert,
    AnomalyScore,
    DeadLetter,
    DeviceEvent,
    HostSample,
    MetricStats,
    action_results,
    actions,
    aggregates,
    alerts,
    decode,
    encode,
    samples,
    signing_bytes,
)
from accelpilot.schemas.codec import versions_of
from accelpilot.schemas.topics import ALL_TOPICS, PAYLOAD_TYPES

# -- strategies ---------------------------------------------------------------------------------
text = st.text(max_size=12)
i64 = st.integers(-(2**63), 2**63 - 1)
ts = st.integers(0, 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
evidence = st.dictionaries(text, finite, max_size=3)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def literal(alias: Any) -> st.SearchStrategy[str]:
    return st.sampled_from(get_args(alias))


def device_event() -> st.SearchStrategy[DeviceEvent]:
    return st.builds(
        DeviceEvent,
        device_id=text,
        kind=literal(samples.EventKind),
        code=i64,
        ts_ns=ts,
        detail=text,
    )


def agent_health() -> st.SearchStrategy[AgentHealth]:
    return st.builds(
        AgentHealth, buffer_depth=i64, oldest_buffered_ts_ns=opt(ts), dropped_total=i64
    )


def metric_stats() -> st.SearchStrategy[MetricStats]:
    return st.builds(
        MetricStats, min=finite, max=finite, mean=finite, p95=finite, last=finite, count=i64
    )


STRATEGIES: dict[type[msgspec.Struct], st.SearchStrategy[Any]] = {
    HostSample: st.builds(
        HostSample,
        host_id=text,
        ts_ns=ts,
        seq=i64,
        interval_s=finite,
        device_ids=st.lists(text, max_size=4),
        device_kinds=st.lists(literal(samples.DeviceKind), max_size=4),
        metrics=st.dictionaries(text, st.lists(opt(finite), max_size=4), max_size=4),
        events=st.lists(device_event(), max_size=3),
        agent=opt(agent_health()),
    ),
    Aggregate: st.builds(
        Aggregate,
        scope=literal(aggregates.Scope),
        key=text,
        host_id=opt(text),
        window_s=finite,
        window_start_ns=ts,
        window_end_ns=ts,
        sample_count=i64,
        gap_count=i64,
        energy_j=opt(finite),
        metrics=st.dictionaries(text, metric_stats(), max_size=3),
    ),
    AnomalyScore: st.builds(
        AnomalyScore,
        id=text,
        host_id=text,
        device_id=text,
        ts_ns=ts,
        detector=text,
        score=finite,
        metric=opt(text),
        evidence=evidence,
    ),
    Alert: st.builds(
        Alert,
        id=text,
        kind=text,
        severity=literal(alerts.Severity),
        state=literal(alerts.AlertState),
        host_id=text,
        device_id=opt(text),
        ts_ns=ts,
        started_ts_ns=ts,
        metric=opt(text),
        reason=text,
        evidence=evidence,
        cluster=opt(text),
    )
    | st.builds(  # a v1 alert (no cluster), still read
        Alert,
        v=st.just(1),
        id=text,
        kind=text,
        severity=literal(alerts.Severity),
        state=literal(alerts.AlertState),
        host_id=text,
        ts_ns=ts,
        started_ts_ns=ts,
        reason=text,
    ),
    Action: st.builds(
        Action,
        action_id=text,
        host_id=text,
        seq=i64,
        kind=literal(actions.ActionKind),
        device_id=opt(text),
        cap_w=opt(finite),
        stream_id=opt(text),
        weights=opt(evidence),
        issued_ts_ns=ts,
        expires_ts_ns=ts,
        issuer=text,
        mode=literal(actions.ActionMode),
        reason=text,
        key_id=text,
        signature=st.binary(max_size=64),
    ),
    ActionResult: st.builds(
        ActionResult,
        action_id=text,
        host_id=text,
        device_id=opt(text),
        ts_ns=ts,
        outcome=literal(action_results.Outcome),
        reason=text,
        previous_cap_w=opt(finite),
        new_cap_w=opt(finite),
        audit_hash=text,
    ),
    DeadLetter: st.builds(
        DeadLetter,
        source_topic=text,
        partition=i64,
        offset=i64,
        key=opt(st.binary()),
        original=st.binary(),
        reason=text,
        detail=text,
        rejected_ts_ns=ts,
        stage=text,
    ),
}

# One small valid instance per payload type, for the example-based tests.
EXAMPLES: dict[type[msgspec.Struct], msgspec.Struct] = {
    HostSample: HostSample(
        host_id="h1",
        ts_ns=1_700_000_000_000_000_000,
        seq=3,
        interval_s=1.0,
        device_ids=["h1/gpu0"],
        device_kinds=["gpu"],
        metrics={"power_w": [300.0]},
        events=[DeviceEvent(device_id="h1/gpu0", kind="xid", code=79, ts_ns=1)],
        agent=AgentHealth(buffer_depth=2),
    ),
    Aggregate: Aggregate(
        scope="host",
        key="h1",
        host_id="h1",
        window_s=10.0,
        window_start_ns=0,
        window_end_ns=10,
        sample_count=10,
        gap_count=0,
        energy_j=3000.0,
        metrics={"power_w": MetricStats(min=1.0, max=2.0, mean=1.5, p95=2.0, last=2.0, count=10)},
    ),
    AnomalyScore: AnomalyScore(
        id="x",
        host_id="h1",
        device_id="h1/gpu0",
        ts_ns=1,
        detector="zscore",
        score=0.9,
        evidence={"z": 4.0},
    ),
    Alert: Alert(
        id="x",
        kind="hot",
        severity="warning",
        state="firing",
        host_id="h1",
        ts_ns=2,
        started_ts_ns=1,
        reason="temp_c above 90",
    ),
    Action: Action(
        action_id="a",
        host_id="h1",
        seq=1,
        kind="park",
        issued_ts_ns=1,
        expires_ts_ns=2,
        issuer="optimizer",
        key_id="k1",
        signature=b"s",
    ),
    ActionResult: ActionResult(action_id="a", host_id="h1", ts_ns=1, outcome="dry_run"),
    DeadLetter: DeadLetter(
        source_topic="telemetry.samples",
        partition=0,
        offset=7,
        key=b"h1",
        original=b"{",
        reason="not-json",
        rejected_ts_ns=1,
        stage="ingest",
    ),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def as_dict(payload: msgspec.Struct) -> dict[str, Any]:
    return json.loads(encode(payload))


def test_every_topic_has_a_strategy_and_an_example() -> None:
    assert set(STRATEGIES) == set(EXAMPLES) == set(PAYLOAD_TYPES.values())


# -- round trip and garbage ---------------------------------------------------------------------
@pytest.mark.parametrize("topic", ALL_TOPICS)
@settings(max_examples=60)
@given(data=st.data())
def test_round_trip(topic: str, data: st.DataObject) -> None:
    kind = PAYLOAD_TYPES[topic]
    payload = data.draw(STRATEGIES[kind])
    assert decode(kind, encode(payload)) == payload


@pytest.mark.parametrize("topic", ALL_TOPICS)
@settings(max_examples=40)
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_garbage_raises_only_schema_errors(topic: str, raw: bytes) -> None:
    try:
        decode(PAYLOAD_TYPES[topic], raw)
    except SchemaError as e:
        assert e.reason in {"not-json", "schema", "unsupported-version"}


@pytest.mark.parametrize("topic", ALL_TOPICS)
@settings(max_examples=40)
@given(data=st.data(), value=json_values)
def test_one_field_replaced_by_any_json(topic: str, data: st.DataObject, value: Any) -> None:
    kind = PAYLOAD_TYPES[topic]
    doc = as_dict(data.draw(STRATEGIES[kind]))
    doc[data.draw(st.sampled_from(sorted(doc)))] = value
    try:
        decoded = decode(kind, json.dumps(doc).encode())
    except SchemaError:
        return
    assert isinstance(decoded, kind)
    assert decoded.v in versions_of(kind)


def test_deeply_nested_json_is_a_schema_error() -> None:
    depth = 5000
    raw = b'{"v":1,"host_id":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(DecodeError):
        decode(HostSample, raw)


def test_reasons_for_not_json_and_wrong_shape() -> None:
    with pytest.raises(DecodeError) as not_json:
        decode(HostSample, b"\xff{")
    with pytest.raises(DecodeError) as wrong_shape:
        decode(HostSample, b"[1, 2]")
    assert (not_json.value.reason, wrong_shape.value.reason) == ("not-json", "schema")


# -- versions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("topic", ALL_TOPICS)
@pytest.mark.parametrize("which", ["zero", "next", "far"])
@pytest.mark.parametrize("change", ["none", "unknown-field", "missing-field", "wrong-type"])
def test_other_versions_are_unsupported(topic: str, which: str, change: str) -> None:
    kind = PAYLOAD_TYPES[topic]
    v = {"zero": 0, "next": max(versions_of(kind)) + 1, "far": 17}[which]
    doc = as_dict(EXAMPLES[kind])
    doc["v"] = v
    first_required = next(f.encode_name for f in msgspec.structs.fields(kind) if f.required)
    if change == "unknown-field":
        doc["field_from_the_future"] = {"nested": [1, 2]}
    elif change == "missing-field":
        del doc[first_required]
    elif change == "wrong-type":
        doc[first_required] = [True]
    with pytest.raises(UnsupportedVersionError) as err:
        decode(kind, json.dumps(doc).encode())
    assert err.value.reason == "unsupported-version"
    assert f"v={v}" in err.value.detail


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_absent_version_reads_as_the_newest(topic: str) -> None:
    # v1 for every payload but Alert, whose v2 reads every v1 alert the same way.
    kind = PAYLOAD_TYPES[topic]
    doc = as_dict(EXAMPLES[kind])
    del doc["v"]
    assert decode(kind, json.dumps(doc).encode()).v == versions_of(kind)[-1]
    assert versions_of(kind) == ((1, 2) if kind is Alert else (1,))


def test_alert_v1_is_read_and_v2_carries_the_cluster() -> None:
    v2 = msgspec.structs.replace(EXAMPLES[Alert], cluster="eu-1")
    assert decode(Alert, encode(v2)).cluster == "eu-1"
    doc = as_dict(v2)
    doc["v"] = 1
    del doc["cluster"]
    old = decode(Alert, json.dumps(doc).encode())
    assert (old.v, old.cluster) == (1, None)
    doc["cluster"] = "eu-1"  # not a v1 field
    with pytest.raises(DecodeError) as err:
        decode(Alert, json.dumps(doc).encode())
    assert err.value.reason == "schema"
    assert "v1 alert has no 'cluster'" in err.value.detail


# -- error details name the field ---------------------------------------------------------------
@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_wrong_type_names_the_field(topic: str) -> None:
    kind = PAYLOAD_TYPES[topic]
    valid = as_dict(EXAMPLES[kind])
    for field in msgspec.structs.fields(kind):
        doc = {**valid, field.encode_name: [[True]]}  # wrong for every field type
        with pytest.raises(DecodeError) as err:
            decode(kind, json.dumps(doc).encode())
        assert err.value.reason == "schema"
        assert re.search(rf"`\$\.{field.encode_name}[`\[.]", err.value.detail), err.value.detail


@pytest.mark.parametrize(
    ("kind", "patch", "path"),
    [
        (
            HostSample,
            {"events": [{"device_id": "a", "kind": "xid", "code": "x", "ts_ns": 1}]},
            "$.events[0].code",
        ),
        (HostSample, {"device_kinds": ["quantum"]}, "$.device_kinds[0]"),
        (HostSample, {"metrics": {"power_w": ["hot"]}}, "$.metrics[...][0]"),
        (
            Aggregate,
            {
                "metrics": {
                    "power_w": {"min": 1, "max": 2, "mean": 1, "p95": 2, "last": 1, "count": 1.5}
                }
            },
            "$.metrics[...].count",
        ),
    ],
)
def test_nested_wrong_type_names_the_path(kind: type, patch: dict[str, Any], path: str) -> None:
    doc = {**as_dict(EXAMPLES[kind]), **patch}
    with pytest.raises(DecodeError) as err:
        decode(kind, json.dumps(doc).encode())
    assert f"`{path}`" in err.value.detail


# -- signing bytes ------------------------------------------------------------------------------
ACTION = Action(
    action_id="a-1",
    host_id="h1",
    seq=5,
    kind="set_power_cap",
    device_id="h1/gpu0",
    cap_w=450.0,
    issued_ts_ns=1_700_000_000_000_000_000,
    expires_ts_ns=1_700_000_030_000_000_000,
    issuer="optimizer",
    key_id="k1",
    signature=b"sig",
)

OTHER_VALUES: dict[str, Any] = {
    "v": 2,
    "action_id": "a-2",
    "host_id": "h2",
    "seq": 6,
    "kind": "reset_power_cap",
    "device_id": "h1/gpu1",
    "cap_w": 450.5,
    "stream_id": "s",
    "weights": {"s": 1.0},
    "issued_ts_ns": 1,
    "expires_ts_ns": 2,
    "issuer": "operator",
    "mode": "manual",
    "reason": "why",
    "key_id": "k2",
}


def test_signing_bytes_is_canonical() -> None:  # a wire contract: hosts re-derive these bytes
    assert signing_bytes(ACTION) == (
        b'{"action_id":"a-1","cap_w":450.0,"device_id":"h1/gpu0",'
        b'"expires_ts_ns":1700000030000000000,"host_id":"h1","issued_ts_ns":1700000000000000000,'
        b'"issuer":"optimizer","key_id":"k1","kind":"set_power_cap","mode":"auto","reason":"",'
        b'"seq":5,"stream_id":null,"v":1,"weights":null}'
    )


@settings(max_examples=100)
@given(action=STRATEGIES[Action], signature=st.binary(max_size=64))
def test_signing_bytes_survive_the_wire_and_ignore_the_signature(
    action: Action, signature: bytes
) -> None:
    expected = signing_bytes(action)
    assert signing_bytes(decode(Action, encode(action))) == expected
    assert signing_bytes(msgspec.structs.replace(action, signature=signature)) == expected


def test_other_values_cover_every_signed_field() -> None:
    assert set(OTHER_VALUES) == {f.name for f in msgspec.structs.fields(Action)} - {"signature"}


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_signing_bytes_change_with_every_signed_field(field: str) -> None:
    changed = msgspec.structs.replace(ACTION, **{field: OTHER_VALUES[field]})
    assert signing_bytes(changed) != signing_bytes(ACTION)


def test_signing_bytes_ignore_weight_order() -> None:
    a = msgspec.structs.replace(ACTION, weights={"x": 0.25, "y": 0.75})
    b = msgspec.structs.replace(ACTION, weights={"y": 0.75, "x": 0.25})
    assert signing_bytes(a) == signing_bytes(b)


def test_invalid_utf8_inside_a_string_is_not_json() -> None:
    raw = b'{"v": 1, "host_id": "ab\xff\xfe", "ts_ns": 1}'
    with pytest.raises(DecodeError) as err:
        decode(HostSample, raw)
    assert err.value.reason == "not-json"
