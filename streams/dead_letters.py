"""Build ``telemetry.dlq`` records: the original bytes, where they came from, and why."""

from __future__ import annotations

from accelpilot.errors import SchemaError
from accelpilot.schemas.dlq import DeadLetter


def dead_letter(
    *,
    raw: bytes,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    error: SchemaError,
    stage: str,
    now_ns: int,
) -> DeadLetter:
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        original=raw,
        reason=error.reason,
        detail=error.detail[:2000],
        rejected_ts_ns=now_ns,
        stage=stage,
    )
