"""The worker's own health on a Prometheus ``/metrics`` endpoint (``worker.metrics_port``; a
private registry, no globals): what it read and dead-lettered, what it published and wrote, how
fresh its output is, and whether InfluxDB holds it back.

Counted per batch, never per record, so the hot path pays a few increments a batch. Values
that live elsewhere (the sink's counters, the loop's in-flight bytes, the newest sample landed)
are read when Prometheus scrapes (:meth:`WorkerMetrics.bind`).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from accelpilot.metrics_endpoint import process_registry, serve_metrics

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = process_registry()
        self.records = Counter(
            "accelpilot_worker_records",
            "telemetry.samples records processed, by outcome (accepted / dead_lettered)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("accepted", "dead_lettered"):
            self.records.labels(outcome=outcome)  # both exported from the start, at 0
        self.device_samples = Counter(
            "accelpilot_worker_device_samples", "Device-samples accepted", registry=r
        )
        self.batch_seconds = Histogram(
            "accelpilot_worker_batch_seconds",
            "Wall time to process one batch (decode, detect, alert, aggregate, hand off)",
            buckets=_SECONDS,
            registry=r,
        )
        self.alerts = Counter(
            "accelpilot_worker_alerts",
            "Alerts published to fleet.alerts, by kind and state",
            ["kind", "state"],
            registry=r,
        )
        self.anomaly_scores = Counter(
            "accelpilot_worker_anomaly_scores", "Anomaly scores published", registry=r
        )
        self.aggregates = Counter(
            "accelpilot_worker_aggregates",
            "Window aggregates published (device, host and fleet scope)",
            registry=r,
        )
        self.influx_write_seconds = Histogram(
            "accelpilot_worker_influx_write_seconds",
            "Wall time of one InfluxDB write, retries included",
            buckets=_SECONDS,
            registry=r,
        )
        self.reader_wait_seconds = Counter(
            "accelpilot_worker_reader_wait_seconds",
            "Time the reader waited for earlier batches to land (InfluxDB or Kafka back-pressure)",
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "accelpilot_worker_in_flight_bytes",
            "Line protocol computed but not yet landed in InfluxDB (bound: worker.in_flight_bytes)",
            registry=r,
        )
        self.landed_sample_time = Gauge(
            "accelpilot_worker_landed_sample_timestamp_seconds",
            "Sample time of the newest sample whose effects all landed (freshness: time() - it)",
            registry=r,
        )
        self.influx_lines = Gauge(
            "accelpilot_worker_influx_lines_total",
            "Lines of line protocol InfluxDB accepted",
            registry=r,
        )
        self.influx_write_failures = Gauge(
            "accelpilot_worker_influx_write_failures_total",
            "InfluxDB write attempts that failed and were retried",
            registry=r,
        )
        self.influx_lines_rejected = Gauge(
            "accelpilot_worker_influx_lines_rejected_total",
            "Lines InfluxDB refused, dead-lettered to telemetry.dlq",
            registry=r,
        )

    def bind(
        self,
        *,
        in_flight_bytes: Callable[[], float],
        landed_sample_time: Callable[[], float],
        influx_lines: Callable[[], float],
        influx_write_failures: Callable[[], float],
        influx_lines_rejected: Callable[[], float],
    ) -> None:
        """Gauges whose values are read at scrape time."""
        self.in_flight_bytes.set_function(in_flight_bytes)
        self.landed_sample_time.set_function(landed_sample_time)
        self.influx_lines.set_function(influx_lines)
        self.influx_write_failures.set_function(influx_write_failures)
        self.influx_lines_rejected.set_function(influx_lines_rejected)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        serve_metrics(
            self.registry,
            port,
            addr,
            setting="worker.metrics_port",
            advice="give each worker on a host its own port, or 0 to turn the endpoint off",
        )
