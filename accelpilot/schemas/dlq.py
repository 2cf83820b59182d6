"""``telemetry.dlq`` v1: a message that could not be accepted, with its original bytes and why."""

from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``original`` holds the bytes exactly as received (base64 in JSON)."""

    v: int = 1
    source_topic: str
    partition: int
    offset: int
    key: bytes | None = None
    original: bytes
    reason: str
    detail: str = ""
    rejected_ts_ns: int
    stage: str
