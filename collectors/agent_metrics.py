"""The agent's own health on a Prometheus ``/metrics`` endpoint (a private registry, no globals)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from accelpilot.metrics_endpoint import process_registry, serve_metrics


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = process_registry()
        r = self.registry
        self.ticks = Counter("accelpilot_agent_ticks", "Ticks sampled", registry=r)
        self.ticks_late = Counter(
            "accelpilot_agent_ticks_late", "Ticks that started later than one interval", registry=r
        )
        self.tick_seconds = Gauge(
            "accelpilot_agent_tick_seconds", "Wall time of the last sampling tick", registry=r
        )
        self.tick_cpu_seconds = Gauge(
            "accelpilot_agent_tick_cpu_seconds", "CPU time of the last sampling tick", registry=r
        )
        self.devices = Gauge("accelpilot_agent_devices", "Devices sampled", registry=r)
        self.buffer_depth = Gauge(
            "accelpilot_agent_buffer_depth", "Samples buffered on disk, not yet acked", registry=r
        )
        self.buffer_oldest = Gauge(
            "accelpilot_agent_buffer_oldest_timestamp_seconds",
            "Sample time of the oldest buffered sample (0 = none)",
            registry=r,
        )
        self.dropped = Gauge(
            "accelpilot_agent_dropped_samples_total",
            "Samples dropped because the buffer bound was hit",
            registry=r,
        )
        self.sent = Gauge(
            "accelpilot_agent_sent_samples_total", "Samples acknowledged by Kafka", registry=r
        )
        self.broker_connected = Gauge(
            "accelpilot_agent_broker_connected", "1 while the broker is reachable", registry=r
        )
        self.submit_errors = Counter(
            "accelpilot_agent_submit_errors",
            "Samples that could not be written to the disk buffer",
            registry=r,
        )
        self.actions = Counter(
            "accelpilot_agent_actions", "Action decisions", ["outcome"], registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        serve_metrics(
            self.registry,
            port,
            addr,
            setting="agent.metrics_port",
            advice="choose a free port (another agent or exporter holds this one), or 0 to turn "
            "the endpoint off",
        )
