"""Fleet roll-ups downstream of the workers (pure; no Kafka here).

One worker sees only its partitions, so it cannot sum the fleet. :class:`FleetRollup` takes the
*host*-scope windows of every worker (in the worker these arrive on one single-partition topic,
so exactly one process of the group owns the roll-up) and emits the fleet window of
``(window_s, window_start_ns)`` with :func:`~accelpilot.streams.aggregates.fleet_rollup` once a
host window ending at least one window plus ``allowed_lateness_s`` after that window's end has
been seen (event time: the hosts have moved on past the next window).

A host window that arrives after its fleet window was emitted (a host replaying its disk buffer,
a worker replaying after a restart) re-emits the fleet window with that host included: the
InfluxDB point and the aggregate are keyed by window start, so the new one replaces the old.
Windows are forgotten ``keep_windows`` window lengths after they were emitted. A host window seen
twice (at-least-once delivery) replaces its first copy, so duplicates change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from accelpilot.config import Settings
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.streams.aggregate_lines import AggregateFormatter
from accelpilot.streams.aggregates import fleet_rollup
from accelpilot.streams.batch_consumer import BatchConsumer
from accelpilot.streams.influx_sink import InfluxSink
from accelpilot.streams.offset_ledger import Token

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000


class FleetRollup:
    """Host windows in, fleet windows out (see the module docstring)."""

    def __init__(self, allowed_lateness_s: float, keep_windows: int = 10) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s={allowed_lateness_s} must be >= 0")
        self.lateness_ns = round(allowed_lateness_s * _NS_PER_S)
        self.keep_windows = keep_windows
        # (window_s, window_start_ns) -> host -> its window
        self._windows: dict[tuple[float, int], dict[str, Aggregate]] = {}
        self._emitted: set[tuple[float, int]] = set()
        self._newest_end_ns: dict[float, int] = {}  # per window size
        self.re_emitted_total = 0

    def add(self, agg: Aggregate) -> list[Aggregate]:
        """Take one aggregate (anything but host scope is ignored); return the fleet windows
        that are complete now, oldest first."""
        return self.add_batch([agg])

    def add_batch(self, aggs: list[Aggregate]) -> list[Aggregate]:
        """Take a batch of aggregates; return each fleet window they completed or changed once,
        in the order they first did: a batch of 500 late host windows of one fleet window sums
        the fleet once, not 500 times (the roll-up was quadratic in the hosts that lag)."""
        due: dict[tuple[float, int], None] = {}  # the windows to emit, in order
        for agg in aggs:
            if agg.scope == "host":
                self._note(agg, due)
        return [fleet_rollup(list(self._windows[key].values())) for key in due]

    def _note(self, agg: Aggregate, due: dict[tuple[float, int], None]) -> None:
        key = (agg.window_s, agg.window_start_ns)
        hosts = self._windows.setdefault(key, {})
        hosts[agg.key] = agg
        if key in self._emitted:
            self.re_emitted_total += 1
            due[key] = None
            return
        newest = max(self._newest_end_ns.get(agg.window_s, agg.window_end_ns), agg.window_end_ns)
        self._newest_end_ns[agg.window_s] = newest
        self._complete(agg.window_s, newest, due)

    def flush(self) -> list[Aggregate]:
        """Emit every window not emitted yet (shutdown)."""
        out = []
        for key in sorted(self._windows):
            if key not in self._emitted:
                self._emitted.add(key)
                out.append(fleet_rollup(list(self._windows[key].values())))
        return out

    def _complete(
        self, window_s: float, newest_end_ns: int, due: dict[tuple[float, int], None]
    ) -> None:
        """Add to ``due`` the windows of ``window_s`` that ``newest_end_ns`` completes; forget
        the ones emitted long enough ago (not one that is due in this batch)."""
        window_ns = round(window_s * _NS_PER_S)
        for key in sorted(k for k in self._windows if k[0] == window_s):
            start = key[1]
            end = start + window_ns
            if key not in self._emitted and end + self.lateness_ns <= newest_end_ns - window_ns:
                self._emitted.add(key)
                due[key] = None
            elif (
                key in self._emitted
                and key not in due
                and end + self.keep_windows * window_ns < newest_end_ns
            ):
                del self._windows[key]
                self._emitted.discard(key)

    @property
    def open_windows(self) -> int:
        return sum(1 for k in self._windows if k not in self._emitted)


#: The single-partition topic carrying every worker's host windows to the one roll-up owner.
ROLLUP_INPUT = "telemetry.fleet-rollup-input"


def rollup_input_topic(app: Any, settings: Settings) -> Any:
    """The worker sends its host windows here (key ``fleet``); one partition (declared by
    :meth:`RollupLoop.start`)."""
    return app.topic(
        settings.topic(ROLLUP_INPUT),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
        internal=True,
    )


class RollupLoop:
    """The fleet roll-up stage of the worker: host windows from the one-partition roll-up topic
    -> fleet windows on ``telemetry.aggregates`` and in InfluxDB (``fleet_agg``).

    Only the worker that is assigned the topic's one partition gets records. It reads them with
    a consumer of its own (streams/batch_consumer.py, group ``<app_id>-fleet-rollup``): a host
    window is released only once the fleet window it belongs to is on ``telemetry.aggregates``
    and in InfluxDB, out of order, and the offset ledger commits only the done prefix, so a
    restart rebuilds the open fleet windows from the topic (at-least-once; the fleet point and
    payload are keyed by window start, so a rewrite replaces)."""

    def __init__(self, settings: Settings, input_topic: Any, aggregates_topic: Any) -> None:
        w = settings.worker
        self.input_topic = input_topic
        self.aggregates_topic = aggregates_topic
        self.lateness_s = w.allowed_lateness_s
        self.rollup = FleetRollup(w.allowed_lateness_s)
        self.formatter = AggregateFormatter(w.cluster)  # fleet_agg of this worker group's cluster
        self.sink = InfluxSink(settings.influx)
        self.consumer = BatchConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.topic(ROLLUP_INPUT),
            group_id=f"{w.app_id}-fleet-rollup",
            batch_max=w.batch_max,
            within_s=w.batch_within_s,
            on_revoked=self._on_revoked,
        )
        self._held: dict[tuple[float, int], list[Token]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.input_topic.maybe_declare()  # one partition: exactly one owner
        await self.consumer.start()
        self._task = asyncio.ensure_future(self._read())

    async def run(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    async def _on_revoked(self, partitions: set[int]) -> None:
        async with self._lock:  # the batch in hand lands first
            self.rollup = FleetRollup(self.lateness_s)  # read again from the committed offset
            self._held.clear()

    async def _read(self) -> None:
        consumer = self.consumer
        async for batch in consumer.batches():
            async with self._lock:
                if batch and batch[0][0][0] != consumer.ledger.generation:
                    continue  # fetched before a rebalance: read again
                consumer.release(await self._process(batch))
            await consumer.maybe_commit()

    async def _process(self, batch: list[tuple[Token, Any]]) -> list[Token]:
        """Roll the batch's host windows up; return the records now done."""
        done: list[Token] = []
        hosts: list[Aggregate] = []
        for token, record in batch:
            try:
                agg = codec.decode(Aggregate, record.value or b"")
            except SchemaError as e:  # the worker wrote it: a bug, logged, not fatal
                log.error("undecodable host window on %s@%d: %s", record.topic, record.offset, e)
                done.append(token)
                continue
            self._held.setdefault((agg.window_s, agg.window_start_ns), []).append(token)
            hosts.append(agg)
        fleet = {(f.window_s, f.window_start_ns): f for f in self.rollup.add_batch(hosts)}
        pending = [
            await self.aggregates_topic.send(key=b"fleet", value=codec.encode(f), force=True)
            for f in fleet.values()
        ]
        for fut in pending:
            await fut
        await self.sink.write([self.formatter.line(f) for f in fleet.values()])
        for key in fleet:
            done += self._held.pop(key, [])
        return done
