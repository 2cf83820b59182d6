"""``fleet.action-results`` v1: what an actuator decided about one action, and why."""

from __future__ import annotations

from typing import Literal

import msgspec

Outcome = Literal["applied", "dry_run", "unchanged", "rejected", "failed"]


class ActionResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``audit_hash`` is the hash-chain entry of this decision in the host's audit log."""

    v: int = 1
    action_id: str
    host_id: str
    device_id: str | None = None
    ts_ns: int
    outcome: Outcome
    reason: str = ""
    previous_cap_w: float | None = None
    new_cap_w: float | None = None
    audit_hash: str = ""
