"""``telemetry.aggregates`` v1: statistics of one scope (device, host or fleet) over one window."""

from __future__ import annotations

from typing import Literal

import msgspec

Scope = Literal["device", "host", "fleet"]


class MetricStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min: float
    max: float
    mean: float
    p95: float
    last: float
    count: int


class Aggregate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``key`` is the device id, the host id or ``"fleet"`` according to ``scope``."""

    v: int = 1
    scope: Scope
    key: str
    host_id: str | None = None
    window_s: float
    window_start_ns: int
    window_end_ns: int
    sample_count: int
    gap_count: int
    energy_j: float | None = None
    metrics: dict[str, MetricStats]
