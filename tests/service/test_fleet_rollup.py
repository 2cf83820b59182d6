"""Fleet roll-ups, for real: host windows from the worker -> the one-partition roll-up topic ->
the fleet-rollup agent -> ``fleet_agg`` in InfluxDB, summing every host of every partition."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.schemas.topics import SAMPLES
from accelpilot.stack.influxdb import influxql
from tests.service.test_first_slice import _start_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]

HOSTS = ("node-a", "node-b", "node-c", "node-d")  # on several of the topic's partitions
TICKS = 60
WINDOW_S = 10.0


def _points(settings: Settings, measurement: str) -> dict[tuple[str, int], tuple[float, int]]:
    body = influxql(
        settings.influx.url,
        f"SELECT energy_j, sample_count, host FROM {measurement}",
        settings.influx.database,
    )
    out = {}
    for series in body["results"][0].get("series", []):
        for ts, energy, count, host in series["values"]:
            out[(host or "fleet", ts)] = (energy, count)
    return out


def test_fleet_windows_sum_the_host_windows_of_every_partition(
    service_settings: Settings, tmp_path: Path
) -> None:
    w = service_settings.worker.model_copy(
        update={"windows_s": (WINDOW_S,), "allowed_lateness_s": 1.0}
    )
    settings = service_settings.model_copy(update={"worker": w})
    worker = _start_worker(settings, tmp_path)
    try:
        start_ns = (time.time_ns() - (TICKS + 30) * 10**9) // 60 // 10**9 * 60 * 10**9
        per_host = [
            list(synthetic_samples(h, n_devices=2, n_ticks=TICKS, start_ns=start_ns, seed=i))
            for i, h in enumerate(HOSTS)
        ]
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            for k in range(TICKS):
                for samples in per_host:
                    pub.send(samples[k].host_id, samples[k])
        # Host windows 0..4 close (the last tick is at 59 s, lateness 1 s); fleet window k is
        # emitted once a host window ending >= its end + one window + lateness is seen: 0..2.
        want_windows = [start_ns + k * int(WINDOW_S * 1e9) for k in range(3)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            fleet = _points(settings, "fleet_agg")
            if all(("fleet", t) in fleet for t in want_windows):
                break
            time.sleep(0.5)
        hosts = _points(settings, "host_agg")
        missing = [t for t in want_windows if ("fleet", t) not in fleet]
        assert not missing, (
            f"fleet windows missing: {missing}; have {sorted(fleet)}; host windows "
            f"{sorted(hosts)}; log: {(tmp_path / 'worker.log').read_text()[-2000:]}"
        )
        for t in want_windows:
            energy, count = fleet[("fleet", t)]
            assert count == len(HOSTS) * 10  # 10 ticks of every host
            assert energy == pytest.approx(sum(hosts[(h, t)][0] for h in HOSTS), rel=1e-12)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
