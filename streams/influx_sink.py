"""Batched, retrying writes of line protocol to InfluxDB through influxdb-client's v2 write API.

What happens to a batch depends on why a write fails (:func:`classify`):

- **Transient or fixable by an operator** (no connection, timeouts, 5xx, 429, 401/403
  credentials, 404 database missing): the same batch is retried with exponential backoff
  (``Retry-After`` honoured) until it lands or the worker stops. The caller does not acknowledge
  the Kafka messages of a batch before its write returns, so a stopped database means
  back-pressure on the stream (Kafka keeps the data), never loss. The sink's only buffer is the
  one write in flight (at most ``worker.write_max_bytes`` of lines, or one batch's); what waits
  behind it is the worker's, bounded by ``worker.in_flight_bytes`` (streams/ingest_loop.py).
- **The data itself is refused** (any other 4xx: a field-type conflict, unparsable line, a point
  beyond the retention policy, a limit): the batch is split in halves until the lines InfluxDB
  refuses are isolated; the others are written, the refused ones are handed to ``on_rejected``
  (the worker dead-letters them to ``telemetry.dlq``) with a reason naming InfluxDB's error. A bad
  line never stalls the stream. InfluxDB 1.x writes the accepted points of a refused batch
  ("partial write ... dropped=N"); rewriting them while splitting is harmless (a point is keyed by
  series + timestamp), and a part whose every line was dropped is not split further.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from accelpilot.config import InfluxSettings

log = logging.getLogger(__name__)

#: Statuses an operator (or time) fixes: retried, never dead-lettered.
RETRY_STATUSES = {401: "check influx.token", 403: "check influx.token", 404: "create the database"}

#: InfluxDB's error text -> dead-letter reason (docs/schemas.md, ``telemetry.dlq``).
REJECTION_REASONS = {
    "field type conflict": "influx-field-type-conflict",
    "unable to parse": "influx-unparsable",
    "points beyond retention policy": "influx-beyond-retention",
    "limit exceeded": "influx-limit-exceeded",
}
#: A refused line whose error is none of the above; 413 is a line too large on its own.
OTHER_REJECTION = "influx-rejected"
TOO_LARGE = "influx-too-large"

_DROPPED = re.compile(r"dropped=(\d+)")


@dataclass(frozen=True)
class RejectedLine:
    """One line InfluxDB refused: ``reason`` is machine-groupable, ``error`` InfluxDB's words."""

    line: str
    status: int
    reason: str
    error: str


RejectedLinesHandler = Callable[[list[RejectedLine]], Awaitable[None]]


@dataclass(frozen=True)
class Verdict:
    action: Literal["retry", "reject"]
    reason: str  # for "reject": the dead-letter reason; for "retry": what to do about it


def classify(status: int | None, error: str) -> Verdict:
    """What to do after a failed write: ``status`` None means no HTTP answer at all.

    >>> classify(None, "Cannot connect to host").action
    'retry'
    >>> classify(400, 'partial write: field type conflict: input field "power_w" ...')
    Verdict(action='reject', reason='influx-field-type-conflict')
    >>> classify(404, 'database not found: "x"')
    Verdict(action='retry', reason='create the database')
    """
    if status is None or status >= 500 or status < 400:
        return Verdict("retry", "wait for InfluxDB")
    if status == 429:
        return Verdict("retry", "InfluxDB is throttling writes")
    if status in RETRY_STATUSES:
        return Verdict("retry", RETRY_STATUSES[status])
    if status == 413:
        return Verdict("reject", TOO_LARGE)
    for text, reason in REJECTION_REASONS.items():
        if text in error:
            return Verdict("reject", reason)
    return Verdict("reject", OTHER_REJECTION)


def dropped_count(error: str) -> int | None:
    """How many points InfluxDB says it dropped ("... dropped=N"), if it says."""
    m = _DROPPED.search(error)
    return int(m.group(1)) if m else None


class _Refused(Exception):
    def __init__(self, status: int, reason: str, error: str) -> None:
        super().__init__(f"{status} {error}")
        self.status, self.reason, self.error = status, reason, error


class InfluxSink:
    def __init__(
        self,
        settings: InfluxSettings,
        *,
        on_rejected: RejectedLinesHandler | None = None,
        max_backoff_s: float = 5.0,
        initial_backoff_s: float = 0.2,
    ) -> None:
        self.settings = settings
        # Without a handler, refused lines are logged in full (nothing vanishes silently).
        self.on_rejected = on_rejected or _log_rejected
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self._client: InfluxDBClientAsync | None = None
        self.points_written = 0
        self.points_rejected = 0
        self.write_failures = 0

    async def start(self) -> None:
        self._client = InfluxDBClientAsync(
            url=self.settings.url,
            token=self.settings.token.get_secret_value(),
            org=self.settings.org,
            timeout=int(self.settings.timeout_s * 1000),
        )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    async def write(self, lines: Sequence[str]) -> None:
        """Write ``lines`` (one batch). Returns once every line is written or, if InfluxDB
        refused it, handed to ``on_rejected``; transient failures are retried meanwhile."""
        if not lines:
            return
        rejected: list[RejectedLine] = []
        await self._write_or_split(list(lines), rejected)
        if rejected:
            self.points_rejected += len(rejected)
            first = rejected[0]
            log.error(
                "InfluxDB refused %d of %d lines (first: %s %s); dead-lettering them",
                len(rejected),
                len(lines),
                first.status,
                first.error[:300],
            )
            await self.on_rejected(rejected)

    async def _write_or_split(self, lines: list[str], rejected: list[RejectedLine]) -> None:
        try:
            await self._write_retrying(lines)
            return
        except _Refused as e:
            dropped = dropped_count(e.error)
            if len(lines) == 1 or (dropped == len(lines) and e.status != 413):
                rejected.extend(RejectedLine(line, e.status, e.reason, e.error) for line in lines)
                return
        mid = len(lines) // 2
        await self._write_or_split(lines[:mid], rejected)
        await self._write_or_split(lines[mid:], rejected)

    async def _write_retrying(self, lines: list[str]) -> None:
        """Write ``lines`` in one request, retrying transient failures; raises :class:`_Refused`
        when InfluxDB refuses the data."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = "\n".join(lines)
        backoff = self.initial_backoff_s
        while True:
            try:
                await self._client.write_api().write(
                    bucket=self.settings.bucket,
                    record=body,
                    write_precision=WritePrecision.NS,  # type: ignore[arg-type]
                )
                self.points_written += len(lines)
                return
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                status, error = e.status, _error_text(e)
                retry_after = _retry_after_s(e.retry_after)
            except Exception as e:  # connection refused, timeouts, client errors: retried
                status, error, retry_after = None, f"{type(e).__name__}: {e}", None
            verdict = classify(status, error)
            if verdict.action == "reject":
                raise _Refused(status or 0, verdict.reason, error)
            self.write_failures += 1
            delay = min(max(backoff, retry_after or 0.0), 60.0)
            log.log(
                logging.ERROR if status in RETRY_STATUSES else logging.WARNING,
                "InfluxDB write of %d points failed (%s%s); %s; retrying in %.1f s",
                len(lines),
                f"{status} " if status else "",
                error[:300],
                verdict.reason,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff_s)


async def _log_rejected(rejected: list[RejectedLine]) -> None:
    for r in rejected:
        log.error("InfluxDB refused (%s, %s): %s", r.reason, r.error[:300], r.line)


def _error_text(e: ApiException) -> str:
    """InfluxDB's own message: ``{"error": ...}`` (1.x) or ``{"message": ...}`` (2.x)."""
    body = e.body
    if isinstance(body, bytes | bytearray):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            return body.strip()
        if isinstance(doc, dict):
            return str(doc.get("error") or doc.get("message") or body).strip()
        return body.strip()
    return str(e.reason or e.status)


def _retry_after_s(value: object) -> float | None:
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
