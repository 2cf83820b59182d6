"""Injected faults in simulated telemetry -> the right alerts on fleet.alerts and in InfluxDB."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.sampler import Sampler
from accelpilot.config import Settings
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.topics import ALERTS, SAMPLES
from accelpilot.stack.influxdb import influxql
from tests.service.test_first_slice import _start_worker, stop_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]

TICKS = 40


def test_thermal_throttle_off_bus_and_ecc_storm_raise_their_alerts(
    service_settings: Settings, tmp_path: Path
) -> None:
    from kafka import KafkaConsumer

    settings = service_settings
    fleet = SimFleet(load_bundled_scenario("demo-fleet"))
    start_ns = (time.time_ns() - TICKS * 10**9) // 10**9 * 10**9
    clock = iter(start_ns + k * 10**9 for k in range(10_000))
    hosts = []
    for host in fleet.hosts:
        backend = SimBackend(fleet, host)
        hosts.append(
            Sampler(host, [backend], backend.discover(), 1.0, clock_ns=lambda: next(clock))
        )
    worker = _start_worker(settings, tmp_path)
    try:
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            for k in range(TICKS):
                fleet.advance()
                for sampler in hosts:
                    sample = sampler.sample()
                    # One clock for the fleet: every host's sample of tick k has the same stamp.
                    sample = type(sample)(**{**_fields(sample), "ts_ns": start_ns + k * 10**9})
                    pub.send(sample.host_id, sample)
        consumer = KafkaConsumer(
            settings.topic(ALERTS),
            bootstrap_servers=settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        wanted = {("thermal", "node1/gpu3"), ("device_silent", "node0/gpu6"), ("ecc", "node3/gpu2")}
        seen: dict[tuple[str, str | None], Alert] = {}
        deadline = time.monotonic() + 90
        while not wanted <= set(seen) and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            for batch in consumer.poll(timeout_ms=1000).values():
                for record in batch:
                    alert = codec.decode(Alert, record.value)
                    if alert.state == "firing":
                        seen.setdefault((alert.kind, alert.device_id), alert)
        consumer.close()
        assert wanted <= set(seen), sorted(seen)
        # Within the window: each fires within a few seconds of its fault (12, 22, 16 s).
        for (kind, device), at_s in (
            (("thermal", "node1/gpu3"), 12),
            (("device_silent", "node0/gpu6"), 22),
            (("ecc", "node3/gpu2"), 16),
        ):
            delay_s = (seen[(kind, device)].ts_ns - start_ns) / 1e9 - at_s
            assert 0 <= delay_s <= 5, (kind, device, delay_s)
        assert "HW thermal slowdown" in seen[("thermal", "node1/gpu3")].reason
        # v2: every alert names the cluster the worker group serves.
        assert {(a.v, a.cluster) for a in seen.values()} == {(2, settings.worker.cluster)}
        # The batch's InfluxDB write follows its Kafka sends: poll for it.
        deadline = time.monotonic() + 30
        result: dict[str, object] = {}
        while "series" not in result and time.monotonic() < deadline:
            result = influxql(
                settings.influx.url,
                "SELECT count(firing) FROM alert WHERE kind = 'thermal'",
                settings.influx.database,
            )["results"][0]
            time.sleep(0.5)
        assert result["series"][0]["values"][0][1] >= 1  # type: ignore[index]
    finally:
        stop_worker(worker)


def _fields(sample: object) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(sample)  # type: ignore[arg-type]
