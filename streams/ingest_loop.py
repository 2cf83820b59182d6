"""The worker's ingest loop: ``telemetry.samples`` batches through :class:`BatchStages`, their
effects landed in order, then their offsets committed.

Records come from the worker's own consumer (streams/batch_consumer.py; docs/streams.md says why
not faust's). For each batch:

1. :meth:`BatchStages.detect`: decode + validate (bad ones become dead letters), sample lines,
   detection and alerts. The alerts are sent and delivered first, all of a batch's at once,
   through a producer of their own (streams/alert_producer.py) where the worker has one.
2. :meth:`BatchStages.aggregate`: windows, idle hosts (wall clock), and the records the
   ``AckGate`` releases (a sample only once every window containing it is written).
3. Anomalies, aggregates, roll-up inputs and dead letters are handed to the producer, and the
   batch's effects are queued: at most ``worker.in_flight_bytes`` of line protocol (and
   ``IN_FLIGHT_BATCHES`` batches) wait to land. Detection and alerts run that far ahead of a
   slow or snapshotting InfluxDB; past it the reader waits (back-pressure, never unbounded
   memory).

A committer takes effects in batch order (as many as fit ``worker.write_max_bytes`` per
InfluxDB write, up to ``worker.influx_writes_in_flight`` writes at once): awaits the
deliveries, writes the lines to InfluxDB,
records each host's windows written (streams/host_state.py, in its compacted topic) and only
then releases the batch's records to the consumer's offset ledger, which commits each
partition's done prefix. A rebalance waits for the batch in hand and for the queued effects to
land (bounded by ``drain_s``), commits, and starts over from the committed offsets with fresh
windows; a new assignment loads its hosts' records before its first sample is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from accelpilot.config import Settings
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.topics import SAMPLES
from accelpilot.streams.alert_producer import AlertProducer
from accelpilot.streams.batch_consumer import BatchConsumer
from accelpilot.streams.batch_stages import BatchOutput, BatchStages, InternalError
from accelpilot.streams.dead_letters import record_letter
from accelpilot.streams.host_state import (
    HostRecord,
    encode_record,
    merged,
    merged_written,
    written_windows,
)
from accelpilot.streams.host_state_topic import HostStateReader
from accelpilot.streams.influx_sink import InfluxSink
from accelpilot.streams.offset_ledger import Token
from accelpilot.streams.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: Batches whose sends and InfluxDB write may be in flight while the next one is computed: a
#: backstop for many small batches; ``worker.in_flight_bytes`` is the bound that counts.
IN_FLIGHT_BATCHES = 256
#: A reader held up this long by effects not landing says so (InfluxDB or the broker is slow).
SLOW_LANDING_S = 1.0


@dataclass(frozen=True)
class IngestTopics:
    """The names of the topics the loop produces to."""

    alerts: str
    anomalies: str
    aggregates: str
    rollup: str
    dlq: str
    host_state: str


class Producer(Protocol):
    """faust's producer (``app.producer``): aiokafka's ``send`` behind a thin wrapper, with none
    of ``Topic.send``'s per-message machinery (~40 us a message in the profile); or the alerts'
    own (streams/alert_producer.py)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]: ...


@dataclass(slots=True)
class _Effects:
    """What one batch still has to see land before its records may be released."""

    pending: list[Any]  # delivery futures (dead letters, aggregates, anomalies, roll-up inputs)
    lines: list[str]  # line protocol for InfluxDB
    size_b: int  # of ``lines`` (characters: the lines are ASCII but for tag and string values)
    release: list[Token]  # records done once the above landed
    written: dict[str, dict[str, int]]  # per host: the windows it writes (host_state.py)
    # Per host of ``written``: its detection state at the end of this batch and the newest
    # sample it reflects; every effect of those samples has landed once this batch has.
    detection: dict[str, tuple[bytes, int]]
    observed_ns: dict[str, int]  # per host, the newest sample detected up to this batch


@dataclass(slots=True)
class _Write:
    """A group of batches whose InfluxDB write is under way."""

    group: list[_Effects]
    size_b: int
    task: asyncio.Future[None]


class IngestLoop:
    def __init__(
        self,
        settings: Settings,
        topics: IngestTopics,
        producer: Producer,
        sink: InfluxSink,
        *,
        declare: Callable[[], Awaitable[None]] | None = None,
        savings: Any = None,
        drain_s: float = 15.0,
        stop_drain_s: float = 5.0,
        metrics: WorkerMetrics | None = None,
        alert_producer: AlertProducer | None = None,
    ) -> None:
        w = settings.worker
        self.topics = topics
        self.producer = producer
        # Alerts on a connection of their own: none waits behind the aggregates' produce
        # request in flight (streams/alert_producer.py). Without one they share ``producer``.
        self.alert_producer = alert_producer
        self.sink = sink
        self._declare = declare  # the host-state topic (compacted, one partition per samples')
        # streams/fleet_events.py's FleetEvents: the host windows closed here feed its savings.
        self.savings = savings
        self.drain_s, self.stop_drain_s = drain_s, stop_drain_s
        self.records: dict[str, HostRecord] = {}  # of the hosts of the assigned partitions
        self.host_partition: dict[str, int] = {}  # the partition each host's samples come from
        # Per host, the newest sample detected in a batch whose effects have landed.
        self.landed_ns: dict[str, int] = {}
        self.stages = BatchStages(w, host_record=self.records.get)
        self.consumer = BatchConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.topic(SAMPLES),
            group_id=f"{w.app_id}-samples",
            batch_max=w.batch_max,
            within_s=w.batch_within_s,
            linger_s=w.batch_linger_s,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
        )
        self.state = HostStateReader(settings.kafka.bootstrap_servers, topics.host_state)
        self._effects: asyncio.Queue[_Effects] = asyncio.Queue(maxsize=IN_FLIGHT_BATCHES)
        self.in_flight_bytes, self.write_max_bytes = w.in_flight_bytes, w.write_max_bytes
        self.writes_in_flight = w.influx_writes_in_flight
        self._in_flight_b = 0  # line protocol queued or being written
        self._landed = asyncio.Event()  # set each time a group of effects has landed
        # The effects taken off the queue but not yet landed (first of the next write's).
        self._carry: _Effects | None = None
        self._batch_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = metrics or WorkerMetrics()
        self.metrics.bind(
            in_flight_bytes=lambda: self._in_flight_b,
            landed_sample_time=lambda: max(self.landed_ns.values(), default=0) / 1e9,
            influx_lines=lambda: sink.points_written,
            influx_write_failures=lambda: sink.write_failures,
            influx_lines_rejected=lambda: sink.points_rejected,
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._declare is not None:
            await self._declare()
        if self.alert_producer is not None:
            await self.alert_producer.start()
        await self.state.start()
        await self.consumer.start()
        self._tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._commit_effects()),
        ]

    async def run(self) -> None:
        """Until stopped; raises what broke the loop (a bug or a fatal broker error)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    async def stop(self) -> None:
        """Stop reading, let queued effects land for up to ``stop_drain_s`` (InfluxDB may be
        down: what did not land is simply read again by the next worker), commit, leave."""
        reader, committer = self._tasks or (None, None)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if committer is not None:
            try:
                await asyncio.wait_for(self._effects.join(), self.stop_drain_s)
            except TimeoutError:
                log.warning("stopping with %d batches not landed", self._effects.qsize())
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
        try:
            await self.consumer.stop()
        finally:
            try:
                await self.state.stop()
            finally:
                if self.alert_producer is not None:
                    await self.alert_producer.stop()

    # -- rebalances -----------------------------------------------------------------------------
    async def _on_revoked(self, partitions: set[int]) -> None:
        async with self._batch_lock:  # the batch in hand is processed (and queued) first
            try:
                await asyncio.wait_for(self._effects.join(), self.drain_s)
                drained = True
            except TimeoutError:
                drained = False
                log.warning(
                    "rebalance: %d batches not landed within %.0f s; their records are read "
                    "again from the committed offsets",
                    self._effects.qsize(),
                    self.drain_s,
                )
            if drained:
                # Every effect landed: the hosts' detection state as of now, for their next
                # owner (records are otherwise written at window closes, up to a window old).
                await self._record_written(
                    {host: {} for host in self.host_partition},
                    self.stages.detection_states(self.host_partition),
                )
            # Every partition is read again from its committed offset: forget the open windows
            # (kept, a host that moved would be closed idle here later and written partial);
            # replayed samples whose detection landed are not detected again.
            self.stages.reset_windows(None if drained else dict(self.landed_ns))
            self.host_partition.clear()
            self.records.clear()

    async def _on_assigned(self, partitions: set[int]) -> None:
        records = await self.state.load(partitions)
        self.records.clear()
        self.records.update(records)
        log.info("samples partitions %s: %d host records", sorted(partitions), len(records))

    # -- the loop -------------------------------------------------------------------------------
    async def _read(self) -> None:
        consumer = self.consumer
        async for batch in consumer.batches():
            async with self._batch_lock:
                if batch and batch[0][0][0] != consumer.ledger.generation:
                    continue  # fetched before a rebalance: read again from the committed offset
                started = time.monotonic()
                effects = await self._process(batch)
                self.metrics.batch_seconds.observe(time.monotonic() - started)
            await self._queue(effects)

    async def _queue(self, effects: _Effects) -> None:
        """Hand a batch's effects to the committer once they fit ``in_flight_bytes`` (always when
        nothing else is in flight: a batch larger than the bound still goes, alone)."""
        waited_from = time.monotonic()
        while self._in_flight_b and self._in_flight_b + effects.size_b > self.in_flight_bytes:
            self._landed.clear()
            await self._landed.wait()
        await self._effects.put(effects)  # then counted: no await between the two
        self._in_flight_b += effects.size_b
        waited_s = time.monotonic() - waited_from
        self.metrics.reader_wait_seconds.inc(waited_s)
        if waited_s >= SLOW_LANDING_S:
            log.warning(
                "reading waited %.1f s for earlier batches to land (%.1f MB of InfluxDB lines "
                "in flight, %d batches): InfluxDB or the broker is slower than the stream; "
                "Kafka keeps the rest",
                waited_s,
                self._in_flight_b / 1e6,
                self._effects.qsize(),
            )

    async def _process(self, batch: Sequence[tuple[Token, Any]]) -> _Effects:
        """One batch's CPU work, its alerts delivered and its other sends started."""
        now_ns = time.time_ns()
        tokens = [token for token, _ in batch]
        records = [record for _, record in batch]
        raws = [r.value if isinstance(r.value, bytes) else bytes(r.value or b"") for r in records]
        t = self.topics
        out = self.stages.detect(raws, tokens, now_ns)
        pending = []
        release_now: list[Token] = []
        encode = codec.encode
        # Alerts first, delivered before the aggregates are even computed: nothing queued or
        # computed in front of them. All of the batch's are handed over before any delivery is
        # awaited, so they share one produce request (a batch with alerts waits one round trip).
        if out.alerts:
            alerts = self.alert_producer or self.producer
            deliveries = [
                await self._send(t.alerts, a.host_id, encode(a), alerts) for a in out.alerts
            ]
            await asyncio.gather(*deliveries)
        for i, e in out.rejected:
            err = e if isinstance(e, SchemaError) else _internal_error(e, records[i])
            pending.append(await self._send_dead_letter(records[i], raws[i], err, now_ns))
            release_now.append(tokens[i])
        out = self.stages.aggregate(out)
        self._count(out)
        host_partition = self.host_partition
        for sample, token in zip(out.accepted, out.held, strict=True):
            if sample.host_id not in host_partition:
                host_partition[sample.host_id] = token[1]
        outgoing = [(t.anomalies, a.host_id, a) for a in out.anomalies]
        outgoing += [(t.aggregates, a.host_id or "fleet", a) for a in out.aggregates]
        outgoing += [(t.rollup, "fleet", a) for a in out.aggregates if a.scope == "host"]
        for topic, key, payload in outgoing:
            pending.append(await self._send(topic, key, encode(payload)))
        if self.savings is not None:
            for a in out.aggregates:
                out.lines += self.savings.on_aggregate(a)
        written = written_windows(out.aggregates)
        return _Effects(
            pending,
            out.lines,
            sum(map(len, out.lines)),
            release_now + out.releasable,
            written,
            self.stages.detection_states(written),
            dict(self.stages.observed_ns),
        )

    async def _commit_effects(self) -> None:
        """The batches' deliveries and InfluxDB writes, then their records released, in batch
        order: when a record is released every earlier batch's effects (the sample lines of
        records released now, the windows that released them) landed.

        The batches waiting when the committer comes round land together, up to
        ``write_max_bytes`` of lines (one InfluxDB write, one round of host records): under a
        light load the reader hands over small batches as soon as they arrive, and a write per
        batch would make the committer the bottleneck. Up to ``writes_in_flight`` writes run at
        once, so InfluxDB is not idle while an answer travels back and the next write is put
        together; they may land in any order, but each group is recorded and released only
        after every earlier one (no key is written with two values by two groups: a window is
        closed once, a replay rewrites the same values)."""
        writes: deque[_Write] = deque()
        try:
            while True:
                waiting = self._carry is not None or not self._effects.empty()
                if not writes or (len(writes) < self.writes_in_flight and waiting):
                    writes.append(await self._start_write())
                else:
                    await self._land(writes.popleft())
        finally:
            for write in writes:  # stopping: what did not land is read again
                write.task.cancel()

    async def _start_write(self) -> _Write:
        """The next group of batches: their deliveries awaited, their InfluxDB write started."""
        queue = self._effects
        group = [self._carry if self._carry is not None else await queue.get()]
        self._carry = None
        size_b = group[0].size_b
        while not queue.empty():
            batch = queue.get_nowait()
            if size_b + batch.size_b > self.write_max_bytes:
                self._carry = batch  # the first of the next write
                break
            group.append(batch)
            size_b += batch.size_b
        try:
            for batch in group:  # dead letters and payloads delivered (acks=all)
                for fut in batch.pending:
                    await fut
        except BaseException:
            self._landed_group(group, size_b)
            raise
        lines = [line for batch in group for line in batch.lines]
        return _Write(group, size_b, asyncio.ensure_future(self._timed_write(lines)))

    async def _timed_write(self, lines: list[str]) -> None:
        started = time.monotonic()
        await self.sink.write(lines)
        self.metrics.influx_write_seconds.observe(time.monotonic() - started)

    async def _land(self, write: _Write) -> None:
        """Once its write returned: the group's windows recorded, its records released."""
        group = write.group
        try:
            await write.task
            # The windows just written are recorded before their records are released: a
            # replay from an offset inside them drops their samples instead of rewriting.
            await self._record_written(
                merged_written(b.written for b in group),
                {h: s for b in group for h, s in b.detection.items()},  # the newest
            )
            self.landed_ns = group[-1].observed_ns
            if self.savings is not None:
                self.savings.save_if_changed()
            for batch in group:
                self.consumer.release(batch.release)
            await self.consumer.maybe_commit()
        finally:
            self._landed_group(group, write.size_b)

    def _landed_group(self, group: list[_Effects], size_b: int) -> None:
        """A group is done with (landed, or failed and the loop is stopping)."""
        for _ in group:
            self._effects.task_done()
        self._in_flight_b -= size_b
        self._landed.set()

    def _count(self, out: BatchOutput) -> None:
        """One batch's outcome in the worker's metrics (a few increments per batch)."""
        m = self.metrics
        m.records.labels(outcome="accepted").inc(len(out.accepted))
        if out.rejected:
            m.records.labels(outcome="dead_lettered").inc(len(out.rejected))
        m.device_samples.inc(sum(len(s.device_ids) for s in out.accepted))
        for a in out.alerts:
            m.alerts.labels(kind=a.kind, state=a.state).inc()
        m.anomaly_scores.inc(len(out.anomalies))
        m.aggregates.inc(len(out.aggregates))

    async def _send(
        self, topic: str, key: str, value: bytes, producer: Producer | None = None
    ) -> Any:
        """Hand one message to ``producer`` (the main one by default); its delivery future."""
        return await (producer or self.producer).send(topic, key.encode(), value, None, None, None)

    async def _send_dead_letter(
        self, record: Any, raw: bytes, err: SchemaError, now_ns: int
    ) -> Any:
        letter = record_letter(record, raw, err, stage="ingest", now_ns=now_ns)
        return await self.producer.send(
            self.topics.dlq, record.key, codec.encode(letter), None, None, None
        )

    async def _record_written(
        self, written: dict[str, dict[str, int]], detection: dict[str, tuple[bytes, int]]
    ) -> None:
        """Each host's record: the windows just written, and where its detection stands (a
        state whose samples' effects all landed: alerts, anomalies, their lines)."""
        sends = []
        for host_id, ends in written.items():
            partition = self.host_partition.get(host_id)
            state, observed = detection.get(host_id, (None, None))
            record = merged(self.records.get(host_id), ends, state, observed)
            if record is None or partition is None:
                continue
            self.records[host_id] = record
            sends.append(
                await self.producer.send(
                    self.topics.host_state,
                    host_id.encode(),
                    encode_record(record),
                    partition,
                    None,
                    None,
                )
            )
        for fut in sends:
            await fut


def _internal_error(e: Exception, record: Any) -> SchemaError:
    log.error(
        "unexpected error on %s[%d]@%d", record.topic, record.partition, record.offset, exc_info=e
    )
    err: SchemaError = InternalError(f"internal-error:{type(e).__name__}", str(e))
    return err
