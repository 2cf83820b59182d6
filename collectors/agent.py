"""`accelpilot agent`: discover, sample every interval, publish through the disk buffer, and
apply verified actions. SIGTERM stops sampling, flushes what the broker takes within a grace
period (the rest stays on disk for the next start) and optionally restores the caps found at
start.

Threads: the sampling loop (this thread) never touches the network; the publisher's sender
thread talks to Kafka; the action thread consumes ``fleet.actions`` (every host reads the topic
and keeps the actions keyed for it: actions are rare) and publishes ``fleet.action-results``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.agent_metrics import AgentMetrics
from accelpilot.collectors.discovery import Discovery
from accelpilot.collectors.sampler import Sampler
from accelpilot.config import Settings
from accelpilot.errors import DiskBufferError, SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.schemas.samples import AgentHealth
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS, GROUP_METADATA_MAX_AGE_MS

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        settings: Settings,
        discovery: Discovery,
        publisher: Any,
        *,
        actuator: Actuator | None = None,
        metrics: AgentMetrics | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.discovery = discovery
        self.publisher = publisher
        self.actuator = actuator
        self.metrics = metrics or AgentMetrics()
        self.interval_s = settings.agent.interval_s
        self.sampler = Sampler(
            settings.host_id,
            discovery.backends,
            discovery.devices,
            self.interval_s,
            clock_ns=clock_ns,
        )
        self.stop_event = threading.Event()
        self._key = settings.host_id.encode()
        self._action_thread: threading.Thread | None = None

    # -- sampling -----------------------------------------------------------------------------
    def health(self) -> AgentHealth:
        h = self.publisher.health()
        return AgentHealth(
            buffer_depth=h.buffer_depth,
            oldest_buffered_ts_ns=h.oldest_buffered_ts_ns,
            dropped_total=h.dropped_total,
        )

    def tick(self) -> None:
        """Sample every device once and hand the payload to the disk buffer (no network)."""
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        sample = self.sampler.sample(self.health())
        m = self.metrics
        try:
            self.publisher.submit(self._key, codec.encode(sample), sample.ts_ns)
        except (DiskBufferError, ValueError) as e:  # disk full, oversized record: keep sampling
            m.submit_errors.inc()
            log.error("sample %d not buffered: %s", sample.seq, e)
        m.ticks.inc()
        m.tick_seconds.set(time.perf_counter() - wall0)
        m.tick_cpu_seconds.set(time.thread_time() - cpu0)

    def _export_health(self) -> None:
        h = self.publisher.health()
        m = self.metrics
        m.devices.set(len(self.sampler.device_ids))
        m.buffer_depth.set(h.buffer_depth)
        m.buffer_oldest.set((h.oldest_buffered_ts_ns or 0) / 1e9)
        m.dropped.set(h.dropped_total)
        m.sent.set(h.sent_total)
        m.broker_connected.set(1 if h.connected else 0)

    def run(self, max_ticks: int | None = None) -> None:
        """Tick on a fixed schedule until stopped (or ``max_ticks``); a late tick is not doubled."""
        next_t = time.monotonic()
        done = 0
        while not self.stop_event.is_set() and (max_ticks is None or done < max_ticks):
            now = time.monotonic()
            if now - next_t > self.interval_s:
                self.metrics.ticks_late.inc()
                next_t = now
            self.tick()
            self._export_health()
            done += 1
            next_t += self.interval_s
            self.stop_event.wait(max(0.0, next_t - time.monotonic()))

    # -- actions ------------------------------------------------------------------------------
    def start_actions(self) -> None:
        if self.actuator is None:
            return
        self._action_thread = threading.Thread(
            target=self._consume_actions, name="actions", daemon=True
        )
        self._action_thread.start()

    def _consume_actions(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        s = self.settings
        assert self.actuator is not None
        consumer = KafkaConsumer(
            s.topic(ACTIONS),
            bootstrap_servers=s.kafka.bootstrap_servers,
            group_id=f"accelpilot-agent-{s.host_id}",
            enable_auto_commit=False,
            # A new group starts at the beginning: old actions are refused as expired or
            # replayed by the verifier, and none published while the agent was joining is lost.
            auto_offset_reset="earliest",
            consumer_timeout_ms=500,
            metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
        )
        producer = KafkaProducer(
            bootstrap_servers=s.kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            while not self.stop_event.is_set():
                for record in consumer:
                    if record.key != self._key:
                        continue
                    for result in self.handle_raw_action(record.value):
                        producer.send(
                            s.topic(ACTION_RESULTS), key=self._key, value=codec.encode(result)
                        )
                    producer.flush()
                    consumer.commit()
                    if self.stop_event.is_set():
                        break
        finally:
            consumer.close()
            producer.close()

    def handle_raw_action(self, raw: bytes) -> list[Any]:
        assert self.actuator is not None
        try:
            action = codec.decode(Action, raw)
        except SchemaError as e:
            log.warning("undecodable action rejected: %s", e)
            self.metrics.actions.labels(outcome="undecodable").inc()
            return []
        results = self.actuator.handle(action)
        for r in results:
            self.metrics.actions.labels(outcome=r.outcome).inc()
        return results

    # -- lifecycle ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: object) -> None:
            log.info("signal %d: stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def shutdown(self, grace_s: float = 10.0) -> None:
        self.stop_event.set()
        if self._action_thread is not None:
            self._action_thread.join(timeout=grace_s)
        self.publisher.close(timeout_s=grace_s)
        self.publisher.buffer.close()
        if self.actuator is not None and self.settings.agent.restore_limits_on_exit:
            restored = self.actuator.restore_caps()
            if restored:
                log.info("restored caps found at start on %s", ", ".join(restored))
        for backend in self.discovery.backends:
            backend.close()


def state_dir(settings: Settings) -> Path:
    path = settings.agent.buffer_dir.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_agent(settings: Settings) -> Agent:
    """Wire discovery, the disk buffer and publisher, and (with public keys) the actuator."""
    from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
    from accelpilot.collectors.audit_log import AuditLog
    from accelpilot.collectors.buffered_publisher import BufferedPublisher
    from accelpilot.collectors.discovery import discover, make_backend
    from accelpilot.collectors.disk_buffer import DiskBuffer
    from accelpilot.errors import ConfigError
    from accelpilot.schemas.topics import SAMPLES
    from accelpilot.signing import load_public_keys

    a = settings.agent
    found = discover([make_backend(n, settings.host_id, scenario=a.scenario) for n in a.backends])
    for name, why in found.missing.items():
        log.info("backend %s not used: %s", name, why)
    if not found.devices:
        raise ConfigError(
            "no devices found by any backend ("
            + "; ".join(f"{k}: {v}" for k, v in found.missing.items())
            + "); set agent.backends (e.g. sim with agent.scenario) or fix the driver"
        )
    home = state_dir(settings)
    buffer = DiskBuffer(home / "samples", max_bytes=a.buffer_max_bytes)
    publisher = BufferedPublisher(
        settings.kafka.bootstrap_servers,
        settings.topic(SAMPLES),
        buffer,
        client_id=f"accelpilot-agent-{settings.host_id}",
    )
    actuator = None
    if a.public_keys is not None:
        targets = [(b, d) for b in found.backends for d in b.discover()]
        verifier = ActionVerifier(
            load_public_keys(a.public_keys.expanduser()),
            settings.host_id,
            time.time_ns,
            JsonSeqStore(home / "action-seq.json", settings.host_id),
        )
        actuator = Actuator(
            settings.host_id,
            targets,
            verifier,
            AuditLog(home / "audit.jsonl"),
            load_weights_path=home / "load-weights.json",
            dry_run=a.dry_run,
        )
    else:
        log.warning("agent.public_keys is not set: fleet.actions are ignored")
    return Agent(settings, found, publisher, actuator=actuator)


def run_agent(settings: Settings, max_ticks: int | None = None) -> None:
    """The `accelpilot agent` main: run until SIGTERM/SIGINT (or ``max_ticks``)."""
    agent = build_agent(settings)
    agent.install_signal_handlers()
    if settings.agent.metrics_port:
        agent.metrics.serve(settings.agent.metrics_port)
    agent.publisher.start()
    agent.start_actions()
    log.info(
        "agent %s: %d devices every %.2f s",
        settings.host_id,
        len(agent.sampler.device_ids),
        agent.interval_s,
    )
    try:
        agent.run(max_ticks=max_ticks)
    finally:
        agent.shutdown()
