"""Decode and validate ``telemetry.samples`` payloads (pure; no Kafka here).

A sample is accepted only if it decodes as v1 and is physically possible: every column has one
value per device, every metric is a known one and inside its physical bounds, device ids are
unique, and the timestamp is not too far in the future. Anything else raises a
:class:`~accelpilot.errors.SchemaError` whose ``reason`` goes to the dead-letter topic.
"""

from __future__ import annotations

import math

from accelpilot.errors import InvalidPayloadError
from accelpilot.schemas import codec
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample

_EARLIEST_TS_NS = 1_500_000_000 * 10**9  # 2017-07-14: older stamps are clock garbage
_MAX_ID_LEN = 256


def _check_id(kind: str, value: str) -> None:
    """Host and device ids become InfluxDB tags and Kafka keys: printable, no backslash."""
    if not value or len(value) > _MAX_ID_LEN or "\\" in value or not value.isprintable():
        raise InvalidPayloadError(
            "bad-id",
            f"{kind} {value[:80]!r} must be 1-{_MAX_ID_LEN} printable characters, no backslash",
        )


def _ids_ok(ids: list[str]) -> bool:
    """All of ``ids`` pass :func:`_check_id` (one C-level pass over their concatenation)."""
    joined = "".join(ids)
    return (
        min(map(len, ids)) >= 1
        and max(map(len, ids)) <= _MAX_ID_LEN
        and "\\" not in joined
        and joined.isprintable()
    )


def validate_sample(sample: HostSample, now_ns: int, max_future_ns: int) -> HostSample:
    """Return ``sample`` unchanged if it is acceptable, else raise InvalidPayloadError."""
    n = len(sample.device_ids)
    _check_id("host_id", sample.host_id)
    if not (n and _ids_ok(sample.device_ids)):
        for device_id in sample.device_ids:
            _check_id("device_id", device_id)
    if n == 0:
        raise InvalidPayloadError("no-devices", "a sample must carry at least one device")
    if len(set(sample.device_ids)) != n:
        raise InvalidPayloadError("duplicate-device", "device_ids must be unique within a sample")
    if len(sample.device_kinds) != n:
        raise InvalidPayloadError(
            "column-length", f"device_kinds has {len(sample.device_kinds)} entries for {n} devices"
        )
    if sample.ts_ns > now_ns + max_future_ns:
        raise InvalidPayloadError(
            "future-timestamp", f"ts_ns is {(sample.ts_ns - now_ns) / 1e9:.0f} s in the future"
        )
    if sample.ts_ns < _EARLIEST_TS_NS:
        raise InvalidPayloadError("ancient-timestamp", f"ts_ns={sample.ts_ns} is before 2017")
    if sample.seq < 0:
        raise InvalidPayloadError("negative-seq", f"seq={sample.seq}")
    if not (sample.interval_s > 0 and math.isfinite(sample.interval_s)):
        raise InvalidPayloadError("bad-interval", f"interval_s={sample.interval_s} must be > 0")
    for name, column in sample.metrics.items():
        spec = METRICS.get(name)
        if spec is None:
            raise InvalidPayloadError("unknown-metric", f"'{name}' is not a v1 metric")
        if len(column) != n:
            raise InvalidPayloadError(
                "column-length", f"metric '{name}' has {len(column)} values for {n} devices"
            )
        for i, value in enumerate(column):
            if value is None:
                continue
            if not (spec.low <= value <= spec.high):  # also rejects NaN
                raise InvalidPayloadError(
                    "out-of-range",
                    f"{name}={value} on {sample.device_ids[i]} outside "
                    f"[{spec.low:g}, {spec.high:g}] {spec.unit}",
                )
    for event in sample.events:
        if event.device_id not in sample.device_ids:
            raise InvalidPayloadError("unknown-event-device", f"event for '{event.device_id}'")
    return sample


def ingest_sample(raw: bytes, now_ns: int, max_future_ns: int) -> HostSample:
    """Decode then validate; raises a SchemaError subclass with the reason on any problem."""
    return validate_sample(codec.decode(HostSample, raw), now_ns, max_future_ns)
