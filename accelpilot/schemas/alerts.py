"""``fleet.alerts`` v2: a condition an operator should know about, firing or resolved.

v2 adds ``cluster`` (the worker group's ``worker.cluster``, or Grafana's ``cluster`` label);
v1 payloads are still read (their ``cluster`` is null).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
AlertState = Literal["firing", "resolved"]


class Alert(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``id`` is deterministic (kind, host, device, episode start), so duplicates collapse."""

    VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)  # read; the last one is written

    v: int = 2
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
    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.v == 1 and self.cluster is not None:
            raise ValueError("a v1 alert has no 'cluster' (it is a v2 field)")
