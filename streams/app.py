"""The faust-streaming worker: ``telemetry.samples`` -> validate -> InfluxDB (samples, 10 s and
1 min aggregates, anomaly scores, alerts) and Kafka (``telemetry.aggregates``,
``telemetry.anomalies``, ``fleet.alerts``); bad input -> ``telemetry.dlq``.

Detector and alert state is in memory: a restarted worker warms its detectors up again (about
30 samples per device) and an alert episode still open at the restart is reported again under a
new id (its start time changes). docs/streams.md says why that state is not checkpointed yet.
What is checkpointed: per host, the end of the last window written to InfluxDB (a faust table,
streams/host_state.py), so a replay from an offset inside a written window does not rewrite it.

Each batch (``noack_take``: bounded by count and time) is processed by :class:`BatchStages`
(pure), its sends started at once; a committer task then awaits the batch's deliveries and its
InfluxDB write, in batch order, and only then acknowledges its events (pipelined: the next batch
is computed meanwhile, at most ``IN_FLIGHT_BATCHES`` wait). Processing is at-least-once and the
InfluxDB writes (keyed by series + timestamp) make replays idempotent. No exactly_once, no agent
concurrency > 1 (see docs/architecture notes on faust's open bugs). Speed figures and the
profile: docs/streams.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from accelpilot.config import Settings, WorkerSettings
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import AGGREGATES, ALERTS, ANOMALIES, DLQ, SAMPLES
from accelpilot.streams.acks import AckGate
from accelpilot.streams.aggregate_lines import aggregate_lines
from accelpilot.streams.aggregates import FloatArray, WindowAggregator, sample_values
from accelpilot.streams.alerting import DeviceMonitor
from accelpilot.streams.dead_letters import dead_letter, send_rejected_lines
from accelpilot.streams.event_lines import alert_lines, anomaly_lines
from accelpilot.streams.host_state import (
    HostRecord,
    decode_record,
    encode_record,
    merged,
    written_windows,
)
from accelpilot.streams.in_order_acks import InOrderAcks
from accelpilot.streams.influx_lines import sample_lines
from accelpilot.streams.influx_sink import InfluxSink
from accelpilot.streams.ingest import ingest_sample
from accelpilot.streams.rollups import register_fleet_rollup, rollup_input_topic

log = logging.getLogger(__name__)

#: Batches whose sends and InfluxDB write may be in flight while the next one is computed.
IN_FLIGHT_BATCHES = 3


class _InternalError(SchemaError):
    """A bug of ours met while handling one message: it goes to the DLQ, the worker goes on."""


@dataclass(slots=True)
class BatchOutput:
    """What one batch produced: rejects (index in the batch, error), InfluxDB lines, payloads
    to publish, and the tokens (events) whose windows have all closed."""

    rejected: list[tuple[int, Exception]]
    lines: list[str]
    alerts: list[Alert]
    anomalies: list[AnomalyScore]
    aggregates: list[Aggregate]
    releasable: list[Any]
    accepted: list[HostSample]  # between the two steps of BatchStages
    held: list[Any]
    values: list[FloatArray]  # sample_values of each accepted sample


class BatchStages:
    """The worker's pure work on one batch (no Kafka, no InfluxDB): ingest, line protocol,
    windowed aggregates, detection and alerts, and which events may be acknowledged.

    The faust agent below and ``accelpilot bench pipeline`` (its in-process stage figure) run
    this same code.
    """

    def __init__(
        self,
        w: WorkerSettings,
        monitor: DeviceMonitor | None = None,
        clock: Callable[[], int] | None = None,
        host_record: Callable[[str], HostRecord | None] | None = None,
    ) -> None:
        self.monitor = monitor or DeviceMonitor()
        self.clock = clock  # ns; wall time (time.time_ns) when None
        self.max_future_ns = int(w.max_future_skew_s * 1e9)
        self.windows_s = list(w.windows_s)
        self.allowed_lateness_s = w.allowed_lateness_s
        # The durable record of each host's windows already written (streams/host_state.py),
        # looked up once per host after each reset.
        self.host_record = host_record
        self.aggregators: list[WindowAggregator] = []
        self.gate = AckGate([])
        self._resumed: set[str] = set()
        self.reset_windows()
        # A host silent this long (event time) has its open windows closed and its samples
        # acked.
        self.idle_s = max(w.windows_s) + w.allowed_lateness_s + 10.0

    def reset_windows(self) -> None:
        """Forget every open window (a rebalance: partitions are read again from their
        committed offsets); the hosts' durable records are looked up again."""
        self.aggregators = [
            WindowAggregator(win, self.allowed_lateness_s) for win in self.windows_s
        ]
        self.gate = AckGate(self.aggregators)
        self._resumed = set()

    def _resume(self, host_id: str) -> None:
        self._resumed.add(host_id)
        record = None if self.host_record is None else self.host_record(host_id)
        if record is None:
            return
        for aggregator in self.aggregators:
            end = record.written_until_ns(aggregator.window_s)
            if end is not None:
                aggregator.resume_host(host_id, end)

    def run(self, raws: Sequence[bytes], tokens: Sequence[Any], now_ns: int) -> BatchOutput:
        """Both steps at once (see :meth:`detect` and :meth:`aggregate`)."""
        return self.aggregate(self.detect(raws, tokens, now_ns))

    def detect(self, raws: Sequence[bytes], tokens: Sequence[Any], now_ns: int) -> BatchOutput:
        """Step 1, the urgent part: ingest, sample lines, detection and alerts. The worker
        publishes the alerts before step 2, so closing a burst of windows never delays them."""
        lines: list[str] = []
        accepted: list[HostSample] = []
        held: list[Any] = []
        values: list[FloatArray] = []
        rejected: list[tuple[int, Exception]] = []
        for i, raw in enumerate(raws):
            try:
                sample = ingest_sample(raw, now_ns, self.max_future_ns)
            except Exception as e:  # never crash on input: every failure is a dead letter
                rejected.append((i, e))
                continue
            lines += sample_lines(sample)
            accepted.append(sample)
            values.append(sample_values(sample))  # one conversion for detection and windows
            held.append(tokens[i])
        # Detection: the detector ensemble, failure-risk rules and the alert engine.
        anomalies, alerts = self.monitor.observe_batch(accepted, values)
        lines += anomaly_lines(anomalies)
        lines += alert_lines(alerts)
        return BatchOutput(rejected, lines, alerts, anomalies, [], [], accepted, held, values)

    def aggregate(self, out: BatchOutput) -> BatchOutput:
        """Step 2: windowed aggregates of the accepted samples, and the events now releasable
        (``tokens[i]`` of a sample is held until every window containing it has closed)."""
        aggregates: list[Aggregate] = []
        aggregators, gate, resumed = self.aggregators, self.gate, self._resumed
        for sample, token, values in zip(out.accepted, out.held, out.values, strict=True):
            if sample.host_id not in resumed:
                self._resume(sample.host_id)
            for aggregator in aggregators:
                aggregates += aggregator.add(sample, values)
            gate.hold(sample.host_id, sample.ts_ns, token)
        # Silence by the wall clock: a partition read behind another is not a silent one.
        now_ns = time.time_ns() if self.clock is None else self.clock()
        for aggregator in aggregators:
            aggregates += aggregator.close_idle_hosts(self.idle_s, now_ns)
        # Fleet roll-ups need every partition: the fleet-rollup agent (streams/rollups.py) builds
        # them from every worker's host windows.
        out.aggregates = [a for a in aggregates if a.scope != "fleet"]
        out.lines += aggregate_lines(out.aggregates)
        # Only hosts that sent samples or had windows closed can release anything.
        touched = {s.host_id for s in out.accepted}
        touched.update(a.key for a in aggregates if a.scope == "host")
        out.releasable = gate.releasable(touched)
        return out


def make_app(settings: Settings) -> faust.App:
    w = settings.worker
    w.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        store="memory://",
        datadir=str(w.data_dir / w.app_id),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        producer_compression_type="lz4" if _has_lz4() else None,
        # Fewer, larger produce requests (faust's default batch is 16 KiB, about 16 aggregates;
        # each request is a socket write that cost ~15% of the worker's CPU in the profile).
        # No linger: while the loop computes a batch, payloads pile up and go out together
        # anyway; an alert handed over on its own leaves at once.
        producer_max_batch_size=512 * 1024,
        broker_commit_interval=1.0,
        # Stop promptly even while InfluxDB is down: unacked events are simply not committed
        # and a restarted worker reads them again (at-least-once, idempotent writes).
        stream_wait_empty=False,
    )

    def raw_topic(name: str) -> Any:
        """Our topics carry bytes both ways: the codec, not faust, (de)serializes payloads."""
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    samples_topic = raw_topic(SAMPLES)
    dlq_topic = raw_topic(DLQ)
    aggregates_topic = raw_topic(AGGREGATES)
    anomalies_topic = raw_topic(ANOMALIES)
    alerts_topic = raw_topic(ALERTS)
    # Host windows also go to the one-partition roll-up topic: one worker sums the fleet.
    rollup_topic = rollup_input_topic(app, settings)
    # Lines InfluxDB refuses (e.g. a field-type conflict) are dead-lettered, not retried.
    sink = InfluxSink(
        settings.influx, on_rejected=send_rejected_lines(dlq_topic, settings.topic(SAMPLES))
    )
    # Per host: the windows already written (streams/host_state.py). Changelog-backed, keyed
    # by host id, written on the partition of the host's samples: it moves with the partition.
    host_table = app.Table(
        "host-state",
        key_type=bytes,
        value_type=bytes,  # bytes: faust's "raw" serializer both ways
        partitions=settings.kafka.partitions,
        default=None,
    )

    def host_record(host_id: str) -> HostRecord | None:
        raw = host_table.data.get(host_id.encode())
        return None if raw is None else decode_record(raw)

    stages = BatchStages(w, host_record=host_record)
    host_partition: dict[str, int] = {}  # the partition each host's samples come from
    # faust 0.15.3 can commit past an unacked offset: ack in arrival order (in_order_acks.py).
    in_order = InOrderAcks()
    gate = stages.gate

    async def process_batch(events: Sequence[Any]) -> _Effects:
        """Handle one batch's CPU work and start its sends; the effects are awaited later."""
        now_ns = time.time_ns()
        in_order.arrived(events)
        raws = [e.value if isinstance(e.value, bytes) else bytes(e.value or b"") for e in events]
        out = stages.detect(raws, events, now_ns)
        pending = []
        ack_now = []
        encode = codec.encode
        # Alerts first, delivered before the aggregates are even computed: nothing queued or
        # computed in front of them (a batch with alerts is rare; it waits one round trip).
        for a in out.alerts:
            await (await _send(alerts_topic, a.host_id, encode(a)))
        for i, e in out.rejected:
            event = events[i]
            err = e if isinstance(e, SchemaError) else _internal_error(e, event.message)
            pending.append(await _send_dead_letter(dlq_topic, event.message, raws[i], err, now_ns))
            ack_now.append(event)
        out = stages.aggregate(out)
        for sample, event in zip(out.accepted, out.held, strict=True):
            if sample.host_id not in host_partition:
                host_partition[sample.host_id] = event.message.partition
        outgoing = [(anomalies_topic, a.host_id, a) for a in out.anomalies]
        outgoing += [(aggregates_topic, a.host_id or "fleet", a) for a in out.aggregates]
        outgoing += [(rollup_topic, "fleet", a) for a in out.aggregates if a.scope == "host"]
        for topic, key, payload in outgoing:
            pending.append(await _send(topic, key, encode(payload)))
        written = written_windows(out.aggregates)
        return _Effects(pending, out.lines, ack_now + out.releasable, written)

    async def commit_effects(effects: asyncio.Queue[_Effects], manual: Any) -> None:
        """Await each batch's deliveries and InfluxDB write, in batch order, then ack its
        events. In order, so that when a batch's events are acked every earlier batch's effects
        (the sample lines of events released now, the windows that released them) have landed."""
        while True:
            batch = await effects.get()
            for fut in batch.pending:  # dead letters and payloads delivered (acks=all)
                await fut
            await sink.write(batch.lines)
            # The windows just written are recorded before the events are acked: a replay
            # from an offset inside them drops their samples instead of rewriting them.
            records = []
            for host_id, ends in batch.written.items():
                partition = host_partition.get(host_id)
                record = merged(host_record(host_id), ends)
                if record is None or partition is None:
                    continue
                key, value = host_id.encode(), encode_record(record)
                host_table.data[key] = value
                records.append(host_table.send_changelog(partition, key, value))
            for fut in records:
                await fut
            for event in in_order.release(batch.ack):
                await manual.ack(event)
            effects.task_done()

    @app.agent(samples_topic, name="ingest-samples")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        # Manual acks: an event is acked only once its effects have landed, and a sample only
        # once the aggregate windows containing it are written (streams/acks.py). (`take` and
        # `take_events` ack in a `finally`, i.e. also when the batch's write was cancelled.)
        # Pipelined: batch N+1 is computed while batch N's sends and write are in flight; at
        # most IN_FLIGHT_BATCHES wait (back-pressure when InfluxDB or the broker is slow). A
        # stopped worker drops what is queued unacked: it is read again (at-least-once).
        manual = stream.noack()
        effects: asyncio.Queue[_Effects] = asyncio.Queue(maxsize=IN_FLIGHT_BATCHES)
        committer = asyncio.ensure_future(commit_effects(effects, manual))
        try:
            async for events in manual.noack_take(w.batch_max, within=w.batch_within_s):
                batch = await process_batch(events)
                put = asyncio.ensure_future(effects.put(batch))
                await asyncio.wait([put, committer], return_when=asyncio.FIRST_COMPLETED)
                if committer.done():  # it only ends by an error: surface it
                    put.cancel()
                    committer.result()
        finally:
            committer.cancel()

    @app.on_partitions_revoked.connect
    async def _forget_open_windows(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        # faust rebalances eagerly, then reads every partition it is assigned again from the
        # committed offset, so each host's new owner rebuilds its open windows. Kept here, a
        # host that moved would have its windows closed later (idle) and written partial, over
        # the complete ones of its new owner (tests/service/test_two_workers.py).
        stages.reset_windows()
        host_partition.clear()
        in_order.reset()
        app.accelpilot_gate = stages.gate  # type: ignore[attr-defined]

    @app.on_after_configured.connect
    def _configured(app: faust.App, **kwargs: Any) -> None:
        log.info("accelpilot worker %s reading %s", w.app_id, samples_topic.get_topic_name())

    app.accelpilot_sink = sink  # type: ignore[attr-defined]
    app.accelpilot_fleet_rollup = register_fleet_rollup(  # type: ignore[attr-defined]
        app, settings, rollup_topic
    )
    app.accelpilot_gate = gate  # type: ignore[attr-defined]
    # Actions, their outcomes and the optimizer's savings (streams/fleet_events.py).
    from accelpilot.streams.fleet_events import register_fleet_events

    app.accelpilot_fleet_events = register_fleet_events(app, settings)  # type: ignore[attr-defined]
    return app


async def _send(topic: Any, key: str, value: bytes) -> Any:
    # force: never attach the message to an event (faust would hold it until the ack).
    return await topic.send(key=key.encode(), value=value, force=True)


async def _send_dead_letter(
    dlq_topic: Any, msg: Any, raw: bytes, err: SchemaError, now_ns: int
) -> Any:
    record = dead_letter(
        raw=raw,
        key=msg.key,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        error=err,
        stage="ingest",
        now_ns=now_ns,
    )
    log.info("dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, err)
    return await dlq_topic.send(key=msg.key, value=codec.encode(record))


def _internal_error(e: Exception, msg: Any) -> SchemaError:
    log.error("unexpected error on %s[%d]@%d", msg.topic, msg.partition, msg.offset, exc_info=e)
    return _InternalError(f"internal-error:{type(e).__name__}", str(e))


@dataclass(slots=True)
class _Effects:
    """What one batch still has to see land before its events may be acked."""

    pending: list[Any]  # delivery futures (dead letters, aggregates, anomalies, alerts)
    lines: list[str]  # line protocol for InfluxDB
    ack: list[Any]  # events to ack once the above landed
    written: dict[str, dict[str, int]]  # per host: the windows it writes (host_state.py)


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = make_app(settings)
    Worker(app, loglevel=loglevel).execute_from_commandline()
