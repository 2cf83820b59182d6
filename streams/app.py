"""The faust-streaming worker: ``telemetry.samples`` -> validate -> InfluxDB (samples, 10 s and
1 min aggregates, anomaly scores, alerts) and Kafka (``telemetry.aggregates``,
``telemetry.anomalies``, ``fleet.alerts``); bad input -> ``telemetry.dlq``.

Detector and alert state is in memory: a restarted worker warms its detectors up again (about
30 samples per device) and an alert episode still open at the restart is reported again under a
new id (its start time changes). Checkpointing that state is issue #4's remaining work.

Each batch (``noack_take``: bounded by count and time) is processed, its dead letters delivered
and its points written before its events are acknowledged, so processing is at-least-once and
the InfluxDB writes (keyed by series + timestamp) make replays idempotent. No exactly_once, no
agent concurrency > 1 (see docs/architecture notes on faust's open bugs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faust

from accelpilot.config import Settings
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import AGGREGATES, ALERTS, ANOMALIES, DLQ, SAMPLES
from accelpilot.streams.acks import AckGate
from accelpilot.streams.aggregate_lines import aggregate_lines
from accelpilot.streams.aggregates import WindowAggregator
from accelpilot.streams.alerting import DeviceMonitor
from accelpilot.streams.dead_letters import dead_letter, send_rejected_lines
from accelpilot.streams.event_lines import alert_lines, anomaly_lines
from accelpilot.streams.influx_lines import sample_lines
from accelpilot.streams.influx_sink import InfluxSink
from accelpilot.streams.ingest import ingest_sample

log = logging.getLogger(__name__)


class _InternalError(SchemaError):
    """A bug of ours met while handling one message: it goes to the DLQ, the worker goes on."""


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
    monitor = DeviceMonitor()
    # Lines InfluxDB refuses (e.g. a field-type conflict) are dead-lettered, not retried.
    sink = InfluxSink(
        settings.influx, on_rejected=send_rejected_lines(dlq_topic, settings.topic(SAMPLES))
    )
    max_future_ns = int(w.max_future_skew_s * 1e9)
    aggregators = [WindowAggregator(win, w.allowed_lateness_s) for win in w.windows_s]
    gate = AckGate(aggregators)
    # A host silent this long (event time) has its open windows closed and its samples acked.
    idle_s = max(w.windows_s) + w.allowed_lateness_s + 10.0

    async def process_batch(events: Sequence[Any]) -> list[Any]:
        """Handle one batch; return the events that may be acknowledged now."""
        now_ns = time.time_ns()
        lines: list[str] = []
        aggregates: list[Aggregate] = []
        accepted: list[HostSample] = []
        pending = []
        ack_now = []
        for event in events:
            msg = event.message
            raw: bytes = (
                event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
            )
            try:
                sample = ingest_sample(raw, now_ns, max_future_ns)
            except Exception as e:  # never crash on input: every failure is a dead letter
                err = e if isinstance(e, SchemaError) else _internal_error(e, msg)
                pending.append(await _send_dead_letter(dlq_topic, msg, raw, err, now_ns))
                ack_now.append(event)
                continue
            lines.extend(sample_lines(sample))
            accepted.append(sample)
            for aggregator in aggregators:
                aggregates.extend(aggregator.add(sample))
            gate.hold(sample.host_id, sample.ts_ns, event)
        for aggregator in aggregators:
            aggregates.extend(aggregator.close_idle_hosts(idle_s))
        # Fleet roll-ups need every partition: a downstream stage builds them from host windows.
        aggregates = [a for a in aggregates if a.scope != "fleet"]
        lines.extend(aggregate_lines(aggregates))
        # Detection: the detector ensemble, failure-risk rules and the alert engine.
        anomalies, alerts = monitor.observe_batch(accepted)
        lines.extend(anomaly_lines(anomalies))
        lines.extend(alert_lines(alerts))
        outgoing = [(anomalies_topic, a.host_id, a) for a in anomalies]
        outgoing += [(alerts_topic, a.host_id, a) for a in alerts]
        outgoing += [(aggregates_topic, a.host_id or "fleet", a) for a in aggregates]
        for topic, key, payload in outgoing:
            pending.append(await topic.send(key=key.encode(), value=codec.encode(payload)))
        for fut in pending:  # dead letters and aggregates delivered (acks=all) before acking
            await fut
        await sink.write(lines)
        return ack_now + gate.releasable()

    @app.agent(samples_topic, name="ingest-samples")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        # Manual acks: an event is acked only once its effects have landed, and a sample only
        # once the aggregate windows containing it are written (streams/acks.py). (`take` and
        # `take_events` ack in a `finally`, i.e. also when the batch's write was cancelled.)
        manual = stream.noack()
        async for events in manual.noack_take(w.batch_max, within=w.batch_within_s):
            for event in await process_batch(events):
                await manual.ack(event)

    @app.on_after_configured.connect
    def _configured(app: faust.App, **kwargs: Any) -> None:
        log.info("accelpilot worker %s reading %s", w.app_id, samples_topic.get_topic_name())

    app.accelpilot_sink = sink  # type: ignore[attr-defined]
    app.accelpilot_gate = gate  # type: ignore[attr-defined]
    # Actions, their outcomes and the optimizer's savings (streams/fleet_events.py).
    from accelpilot.streams.fleet_events import register_fleet_events

    app.accelpilot_fleet_events = register_fleet_events(app, settings)  # type: ignore[attr-defined]
    return app


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
    log.exception("unexpected error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
    return _InternalError(f"internal-error:{type(e).__name__}", str(e))


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
