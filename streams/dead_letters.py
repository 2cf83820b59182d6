"""Build ``telemetry.dlq`` records: the original bytes, where they came from, and why."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.dlq import DeadLetter

if TYPE_CHECKING:
    from accelpilot.streams.influx_sink import RejectedLine, RejectedLinesHandler

log = logging.getLogger(__name__)


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


def record_letter(
    record: Any, raw: bytes, error: SchemaError, *, stage: str, now_ns: int
) -> DeadLetter:
    """The dead letter of a Kafka ``record`` (``key``, ``topic``, ``partition``, ``offset``)
    whose payload ``raw`` was refused at ``stage``; logged with where it came from."""
    log.info("dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
    return dead_letter(
        raw=raw,
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error=error,
        stage=stage,
        now_ns=now_ns,
    )


def rejected_line_letter(rejected: RejectedLine, *, source_topic: str, now_ns: int) -> DeadLetter:
    """A line InfluxDB refused (stage ``influx-sink``): ``original`` is the line protocol; it was
    built from a batch of messages, not one, so ``partition`` and ``offset`` are -1."""
    return DeadLetter(
        source_topic=source_topic,
        partition=-1,
        offset=-1,
        key=None,
        original=rejected.line.encode(),
        reason=rejected.reason,
        detail=f"InfluxDB {rejected.status}: {rejected.error}"[:2000],
        rejected_ts_ns=now_ns,
        stage="influx-sink",
    )


def send_rejected_lines(dlq_topic: Any, source_topic: str) -> RejectedLinesHandler:
    """The worker's ``on_rejected``: dead-letter refused lines to ``dlq_topic`` (a faust topic)
    and wait until the broker has them (acks=all), before the batch is acknowledged."""

    async def send(rejected: list[RejectedLine]) -> None:
        now_ns = time.time_ns()
        pending = [
            await dlq_topic.send(
                key=None,
                value=codec.encode(
                    rejected_line_letter(r, source_topic=source_topic, now_ns=now_ns)
                ),
            )
            for r in rejected
        ]
        for fut in pending:
            await fut

    return send
