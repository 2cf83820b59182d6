"""The worker (``accelpilot worker``): a faust-streaming app whose ingest loop reads
``telemetry.samples`` -> validate -> InfluxDB (samples, 10 s and 1 min aggregates, anomaly
scores, alerts) and Kafka (``telemetry.aggregates``, ``telemetry.anomalies``, ``fleet.alerts``);
bad input -> ``telemetry.dlq``. Its roll-up stage sums host windows to the fleet
(streams/rollups.py); its faust agents record actions, their outcomes and the savings
(streams/fleet_events.py).

The samples and the roll-up input are read by consumers of the worker's own
(streams/batch_consumer.py; faust's loses records around rebalances, docs/streams.md); the
samples are processed by the pure
:class:`~accelpilot.streams.batch_stages.BatchStages` and landed in order by
streams/ingest_loop.py. Processing is at-least-once and the InfluxDB writes (keyed by series +
timestamp) make replays idempotent; per host, the end of the last window written is recorded
(streams/host_state.py), so a replay from an offset inside a written window does not rewrite
it. No exactly_once, no agent concurrency > 1 (faust's open bugs).

Each host's record also carries its detection state (open alert episodes, failure-risk state,
the detectors' learned rows of its devices) and the newest sample it reflects: the host's next
owner goes on with the same episodes and baselines and does not detect the replayed samples
again. docs/streams.md, "Checkpointing".
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import faust
import mode

from accelpilot.config import Settings
from accelpilot.schemas.topics import AGGREGATES, ALERTS, ANOMALIES, DLQ, SAMPLES
from accelpilot.streams import gc_settings
from accelpilot.streams.alert_producer import AlertProducer
from accelpilot.streams.dead_letters import send_rejected_lines
from accelpilot.streams.host_state_topic import host_state_topic_name
from accelpilot.streams.influx_sink import InfluxSink
from accelpilot.streams.ingest_loop import IngestLoop, IngestTopics
from accelpilot.streams.partitioner import CachingPartitioner
from accelpilot.streams.rollups import ROLLUP_INPUT, RollupLoop, rollup_input_topic
from accelpilot.streams.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


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
        # Kafka's default partitioner, remembered per key (streams/partitioner.py).
        producer_partitioner=CachingPartitioner(),
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

    dlq_topic = raw_topic(DLQ)
    aggregates_topic = raw_topic(AGGREGATES)
    # Host windows also go to the one-partition roll-up topic: one worker sums the fleet.
    rollup_topic = rollup_input_topic(app, settings)
    # Lines InfluxDB refuses (e.g. a field-type conflict) are dead-lettered, not retried.
    sink = InfluxSink(
        settings.influx, on_rejected=send_rejected_lines(dlq_topic, settings.topic(SAMPLES))
    )
    # Per host: the end of the windows already written (streams/host_state.py), in a compacted
    # topic with one partition per samples partition: a host's record moves with its partition.
    host_state_topic = app.topic(
        host_state_topic_name(w.app_id),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
        compacting=True,
        internal=True,
    )
    topics = IngestTopics(
        alerts=settings.topic(ALERTS),
        anomalies=settings.topic(ANOMALIES),
        aggregates=settings.topic(AGGREGATES),
        rollup=rollup_topic.get_topic_name(),
        dlq=settings.topic(DLQ),
        host_state=host_state_topic.get_topic_name(),
    )
    # Actions, their outcomes and the optimizer's savings (streams/fleet_events.py); the
    # savings are fed by the ingest loop with the host windows it closes.
    from accelpilot.streams.fleet_events import register_fleet_events

    fleet_events = register_fleet_events(app, settings)
    metrics = WorkerMetrics()
    ingest = IngestLoop(
        settings,
        topics,
        app.producer,
        sink,
        declare=host_state_topic.maybe_declare,
        savings=fleet_events,
        metrics=metrics,
        alert_producer=AlertProducer(
            settings.kafka.bootstrap_servers, topics.alerts, client_id=f"{w.app_id}-alerts"
        ),
    )
    rollup = RollupLoop(settings, rollup_topic, aggregates_topic)
    app.service(_service_for(ingest, f"{w.app_id} reading {settings.topic(SAMPLES)}"))
    app.service(_service_for(rollup, f"{w.app_id} rolling up {settings.topic(ROLLUP_INPUT)}"))
    if w.metrics_port:
        # Before any service starts: a port in use stops the worker here, naming the field.
        metrics.serve(w.metrics_port, w.metrics_addr)
    app.accelpilot_ingest = ingest  # type: ignore[attr-defined]
    app.accelpilot_fleet_rollup = rollup  # type: ignore[attr-defined]
    app.accelpilot_fleet_events = fleet_events  # type: ignore[attr-defined]
    return app


class _Loop(Protocol):
    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


def _service_for(loop: _Loop, what: str) -> type[mode.Service]:
    """A faust service that starts and stops ``loop`` with the app; a loop that breaks (a bug,
    a fatal broker error) crashes the service, and the worker stops."""

    class LoopService(mode.Service):
        async def on_start(self) -> None:
            await loop.start()
            log.info("accelpilot worker: %s", what)

        @mode.Service.task
        async def _run(self) -> None:
            await loop.run()

        async def on_stop(self) -> None:
            await loop.stop()

    return LoopService


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True


def make_worker(app: faust.App, loglevel: str = "info") -> Any:
    """faust's ``Worker`` for ``app``, without its terminal spinner.

    At a log level of WARNING or above faust keeps a progress spinner that sets the root logger
    to DEBUG and hangs a DEBUG handler on it, so every debug call of every library (aiokafka
    logs one per message sent) builds a record and runs the handlers: 5 % of the worker's CPU
    during a drain at ``-l warning``, and the level asked for not honoured. Without the spinner
    the root logger is at ``loglevel``."""
    from faust.worker import Worker

    worker = Worker(app, loglevel=loglevel)
    worker.spinner = None
    return worker


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    worker = make_worker(make_app(settings), loglevel)
    gc_settings.tune()  # after start-up: the app and the modules are frozen
    worker.execute_from_commandline()
