"""Batched, retrying writes of line protocol to InfluxDB through influxdb-client's v2 write API.

A failed write is retried with exponential backoff until it succeeds or the worker stops; the
caller does not acknowledge the Kafka messages of a batch before its write returns, so a stopped
database means back-pressure on the stream (Kafka keeps the data), never loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from influxdb_client import WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

from accelpilot.config import InfluxSettings

log = logging.getLogger(__name__)


class InfluxSink:
    def __init__(self, settings: InfluxSettings, *, max_backoff_s: float = 5.0) -> None:
        self.settings = settings
        self.max_backoff_s = max_backoff_s
        self._client: InfluxDBClientAsync | None = None
        self.points_written = 0
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
            await self._client.close()
            self._client = None

    async def write(self, lines: Sequence[str]) -> None:
        """Write ``lines`` (one batch); retries with backoff until it lands."""
        if not lines:
            return
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = "\n".join(lines)
        backoff = 0.2
        while True:
            try:
                await self._client.write_api().write(
                    bucket=self.settings.bucket, record=body, write_precision=WritePrecision.NS
                )
                self.points_written += len(lines)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused, 5xx, timeouts: all retried
                self.write_failures += 1
                log.warning(
                    "InfluxDB write of %d points failed (%s); retrying in %.1f s",
                    len(lines),
                    e,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
