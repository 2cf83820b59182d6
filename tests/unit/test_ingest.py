"""validate_sample / ingest_sample: each rejection reason, its boundary, and what must pass."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.errors import DecodeError, InvalidPayloadError, UnsupportedVersionError
from accelpilot.schemas import DeviceEvent, HostSample, encode
from accelpilot.schemas.metrics import METRICS
from accelpilot.streams.ingest import ingest_sample, validate_sample

START_NS = 1_700_000_000 * 10**9
NOW_NS = START_NS + 60 * 10**9
MAX_FUTURE_NS = 300 * 10**9


def valid(n_devices: int = 4) -> HostSample:
    return next(synthetic_samples("h1", n_devices=n_devices, n_ticks=1, start_ns=START_NS))


def check(sample: HostSample) -> HostSample:
    return validate_sample(sample, NOW_NS, MAX_FUTURE_NS)


def with_metric(s: HostSample, name: str, column: list[float | None]) -> HostSample:
    return replace(s, metrics={**s.metrics, name: column})


Breaker = Callable[[HostSample], HostSample]
NAN, INF = float("nan"), float("inf")

REJECTIONS: list[tuple[str, Breaker]] = [
    ("bad-id", lambda s: replace(s, host_id="")),
    ("bad-id", lambda s: replace(s, host_id="rack\\1")),
    ("bad-id", lambda s: replace(s, device_ids=["a\nb", *s.device_ids[1:]])),
    ("no-devices", lambda s: replace(s, device_ids=[], device_kinds=[], metrics={})),
    ("duplicate-device", lambda s: replace(s, device_ids=[s.device_ids[0]] * s.n_devices)),
    ("column-length", lambda s: replace(s, device_kinds=s.device_kinds[:-1])),
    ("column-length", lambda s: with_metric(s, "power_w", s.metrics["power_w"][:-1])),
    ("column-length", lambda s: with_metric(s, "power_w", [*s.metrics["power_w"], 1.0])),
    ("future-timestamp", lambda s: replace(s, ts_ns=NOW_NS + MAX_FUTURE_NS + 1)),
    ("ancient-timestamp", lambda s: replace(s, ts_ns=1_400_000_000 * 10**9)),
    ("negative-seq", lambda s: replace(s, seq=-1)),
    ("bad-interval", lambda s: replace(s, interval_s=0.0)),
    ("bad-interval", lambda s: replace(s, interval_s=-1.0)),
    ("bad-interval", lambda s: replace(s, interval_s=NAN)),
    ("bad-interval", lambda s: replace(s, interval_s=INF)),
    ("unknown-metric", lambda s: with_metric(s, "power_kw", [0.3] * s.n_devices)),
    ("out-of-range", lambda s: with_metric(s, "power_w", [-0.5, *s.metrics["power_w"][1:]])),
    ("out-of-range", lambda s: with_metric(s, "temp_c", [*s.metrics["temp_c"][:-1], 200.5])),
    ("out-of-range", lambda s: with_metric(s, "util_compute_pct", [100.01] * s.n_devices)),
    ("out-of-range", lambda s: with_metric(s, "power_w", [NAN, *s.metrics["power_w"][1:]])),
    ("out-of-range", lambda s: with_metric(s, "energy_j", [INF, *s.metrics["energy_j"][1:]])),
    ("out-of-range", lambda s: with_metric(s, "temp_c", [-INF, *s.metrics["temp_c"][1:]])),
    (
        "unknown-event-device",
        lambda s: replace(
            s, events=[DeviceEvent(device_id="h2/gpu0", kind="xid", code=79, ts_ns=s.ts_ns)]
        ),
    ),
]


@pytest.mark.parametrize(("reason", "breaker"), REJECTIONS, ids=[r for r, _ in REJECTIONS])
def test_rejection_reason(reason: str, breaker: Breaker) -> None:
    with pytest.raises(InvalidPayloadError) as err:
        check(breaker(valid()))
    assert err.value.reason == reason


def test_out_of_range_detail_names_metric_device_and_bounds() -> None:
    s = valid()
    with pytest.raises(InvalidPayloadError) as err:
        check(with_metric(s, "temp_c", [20.0, 20.0, 250.0, 20.0]))
    assert err.value.detail == "temp_c=250.0 on h1/gpu2 outside [-60, 200] degC"


ACCEPTED: list[tuple[str, Breaker]] = [
    ("exactly max_future ahead", lambda s: replace(s, ts_ns=NOW_NS + MAX_FUTURE_NS)),
    ("in the past", lambda s: replace(s, ts_ns=NOW_NS - 3600 * 10**9)),
    ("seq zero", lambda s: replace(s, seq=0)),
    ("absent values", lambda s: with_metric(s, "fan_pct", [None] * s.n_devices)),
    ("no metrics at all", lambda s: replace(s, metrics={})),
    ("mixed kinds", lambda s: replace(s, device_kinds=["gpu", "cpu", "npu", "tpu"])),
    (
        "event on a known device",
        lambda s: replace(
            s, events=[DeviceEvent(device_id=s.device_ids[1], kind="ecc", code=1, ts_ns=s.ts_ns)]
        ),
    ),
    *[
        (f"{m.name} at low", lambda s, m=m: with_metric(s, m.name, [m.low] * s.n_devices))
        for m in METRICS.values()
    ],
    *[
        (f"{m.name} at high", lambda s, m=m: with_metric(s, m.name, [m.high] * s.n_devices))
        for m in METRICS.values()
    ],
]


@pytest.mark.parametrize(("case", "change"), ACCEPTED, ids=[c for c, _ in ACCEPTED])
def test_accepted(case: str, change: Breaker) -> None:
    sample = change(valid())
    assert check(sample) is sample


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_devices=st.integers(1, 64),
    interval_s=st.sampled_from([0.1, 1.0, 10.0, 60.0]),
    host_id=st.text(
        st.characters(
            codec="utf-8", exclude_characters="\\", exclude_categories=("Cc", "Cs", "Zl", "Zp")
        ),
        min_size=1,
        max_size=20,
    ).filter(str.isprintable),
)
def test_synthetic_samples_always_pass(
    seed: int, n_devices: int, interval_s: float, host_id: str
) -> None:
    ticks = synthetic_samples(
        host_id, n_devices=n_devices, n_ticks=5, start_ns=START_NS, interval_s=interval_s, seed=seed
    )
    for sample in ticks:
        assert ingest_sample(encode(sample), NOW_NS, MAX_FUTURE_NS) == check(sample)


# -- ingest_sample: decode + validate -----------------------------------------------------------
def test_ingest_round_trips_a_valid_sample() -> None:
    s = valid()
    assert ingest_sample(encode(s), NOW_NS, MAX_FUTURE_NS) == s


def test_ingest_reports_decode_version_and_rule_problems() -> None:
    doc = json.loads(encode(valid()))
    with pytest.raises(DecodeError) as not_json:
        ingest_sample(b"power_w=3", NOW_NS, MAX_FUTURE_NS)
    with pytest.raises(UnsupportedVersionError):
        ingest_sample(json.dumps({**doc, "v": 2}).encode(), NOW_NS, MAX_FUTURE_NS)
    with pytest.raises(InvalidPayloadError) as rule:
        ingest_sample(json.dumps({**doc, "seq": -4}).encode(), NOW_NS, MAX_FUTURE_NS)
    assert (not_json.value.reason, rule.value.reason) == ("not-json", "negative-seq")
