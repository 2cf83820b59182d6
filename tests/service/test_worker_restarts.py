"""At-least-once across a worker stop while InfluxDB is down: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.schemas.topics import SAMPLES
from tests.service.influx_private import private_influx, start
from tests.service.test_first_slice import _count_points, _start_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _wait_points(settings: Settings, want: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := _count_points(settings)) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    return n


def _stop(worker: subprocess.Popen[bytes], sig: int) -> None:
    os.killpg(worker.pid, sig)
    worker.wait(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_stopped_while_influxdb_is_down_loses_nothing(
    service_settings: Settings, tmp_path: Path, sig: int
) -> None:
    # A private InfluxDB for this test, so stopping it does not disturb anyone else.
    with private_influx(service_settings, tmp_path / "run", "restarts") as (settings, influx):
        worker = _start_worker(settings, tmp_path)
        try:
            start_ns = (time.time_ns() - 200 * 10**9) // 10**9 * 10**9
            ticks = list(synthetic_samples("node-r", n_devices=4, n_ticks=120, start_ns=start_ns))
            with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
                for s in ticks[:60]:
                    pub.send(s.host_id, s)
            assert _wait_points(settings, 60 * 4, 90) == 60 * 4

            influx.stop()
            with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
                for s in ticks[60:]:
                    pub.send(s.host_id, s)
            time.sleep(3)  # the worker has the batch and is retrying the write
            _stop(worker, sig)

            start(influx)
            worker = _start_worker(settings, tmp_path)
            assert _wait_points(settings, 120 * 4, 120) == 120 * 4
        finally:
            if worker.poll() is None:
                _stop(worker, signal.SIGKILL)
