"""``fleet.alerts`` v1: a condition an operator should know about, firing or resolved."""

from __future__ import annotations

from typing import Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
AlertState = Literal["firing", "resolved"]


class Alert(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``id`` is deterministic (kind, host, device, episode start), so duplicates collapse."""

    v: int = 1
    id: str
    kind: str
    severity: Severity
    state: AlertState
    host_id: str
    device_id: str | None = None
    ts_ns: int
    started_ts_ns: int
    metric: str | None = None
    reason: str
    evidence: dict[str, float] = {}
