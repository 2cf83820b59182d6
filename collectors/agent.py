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
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.schemas.samples import AgentHealth
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS

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
        self.publisher.submit(self._key, codec.encode(sample), sample.ts_ns)
        m = self.metrics
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
            auto_offset_reset="latest",
            consumer_timeout_ms=500,
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
