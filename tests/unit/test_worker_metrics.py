"""The worker's /metrics endpoint: values read at scrape time, a port in use named as config."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accelpilot.errors import ConfigError
from accelpilot.streams.worker_metrics import WorkerMetrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bound(m: WorkerMetrics, in_flight: list[float]) -> WorkerMetrics:
    m.bind(
        in_flight_bytes=lambda: in_flight[0],
        landed_sample_time=lambda: 1.7e9,
        influx_lines=lambda: 42,
        influx_write_failures=lambda: 3,
        influx_lines_rejected=lambda: 0,
    )
    return m


def test_scrape_reads_bound_values_and_counts() -> None:
    in_flight = [1234.0]
    m = _bound(WorkerMetrics(), in_flight)
    m.records.labels(outcome="accepted").inc(10)
    m.alerts.labels(kind="thermal", state="firing").inc()
    port = _free_port()
    m.serve(port)
    in_flight[0] = 99.0  # read when scraped, not when bound
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got[("accelpilot_worker_in_flight_bytes", ())] == 99.0
    # The process's own figures too (a private registry has none by itself): CPU per
    # device-sample in production is rate(process_cpu_seconds_total) over the samples' rate.
    assert got[("process_cpu_seconds_total", ())] > 0
    assert got[("process_resident_memory_bytes", ())] > 10e6
    assert got[("python_gc_collections_total", (("generation", "0"),))] >= 0
    assert got[("accelpilot_worker_landed_sample_timestamp_seconds", ())] == 1.7e9
    assert got[("accelpilot_worker_influx_write_failures_total", ())] == 3
    assert got[("accelpilot_worker_influx_lines_total", ())] == 42
    assert got[("accelpilot_worker_records_total", (("outcome", "accepted"),))] == 10
    assert got[("accelpilot_worker_records_total", (("outcome", "dead_lettered"),))] == 0
    assert got[("accelpilot_worker_alerts_total", (("kind", "thermal"), ("state", "firing")))] == 1


def test_a_port_in_use_is_a_config_error_naming_the_field(busy_port: int) -> None:
    with pytest.raises(ConfigError, match=r"worker\.metrics_port.*own port, or 0"):
        WorkerMetrics().serve(busy_port)
