"""``telemetry.anomalies`` v1: one detector's score for one device at one instant."""

from __future__ import annotations

import msgspec


class AnomalyScore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``id`` is deterministic (detector, device, ts_ns), so replays de-duplicate."""

    v: int = 1
    id: str
    host_id: str
    device_id: str
    ts_ns: int
    detector: str
    score: float
    metric: str | None = None
    evidence: dict[str, float] = {}
