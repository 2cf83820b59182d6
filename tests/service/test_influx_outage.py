"""InfluxDB stopped for 30 s under a steady load: nothing is lost, and the worker recovers on its
own (same process, no restart, no manual step) once the database is back.

The test runs its own influxd (free ports, data in the test's directory): the shared one stays up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from accelpilot.config import Settings
from tests.service.influx_private import private_influx, start
from tests.service.pipeline_checks import (
    SteadyPublisher,
    count_device_samples,
    device_windows_in_influx,
    expected_device_windows,
    fleet_ticks,
    wait_until,
)
from tests.service.test_first_slice import _start_worker, stop_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]

OUTAGE_S = 30.0
TICKS_PER_S = 10.0  # 10 s of event time per second: windows keep closing during the outage
TICKS = 700  # ~10 s before the outage, 30 s of it, ~30 s after


def test_influxdb_down_30s_under_load_loses_nothing_and_recovers_unattended(
    service_settings: Settings, tmp_path: Path
) -> None:
    with private_influx(service_settings, database="outage") as (settings, influx):
        w = settings.worker
        start_ns = (time.time_ns() - (TICKS + 60) * 10**9) // 60 // 10**9 * 60 * 10**9
        log = tmp_path / "worker.log"
        worker = _start_worker(settings, tmp_path)

        def alive() -> None:
            assert worker.poll() is None, "worker died:\n" + log.read_text()[-3000:]

        publisher = SteadyPublisher(settings, fleet_ticks(start_ns), TICKS_PER_S, TICKS)
        try:
            publisher.start()
            # Under load and writing before the outage.
            assert wait_until(lambda: count_device_samples(settings) > 0, 60, alive)
            publisher.wait_ticks(100)
            alive()
            assert influx.stop()
            down_at, down_tick = time.monotonic(), publisher.ticks_sent
            time.sleep(OUTAGE_S)
            alive()
            assert "InfluxDB write of" in log.read_text()  # it noticed, and is retrying
            start(influx)  # same ports, same data directory
            up_at, up_tick = time.monotonic(), publisher.ticks_sent
            published = publisher.finish()
            finished_at = time.monotonic()

            want = expected_device_windows(published, w.windows_s, w.allowed_lateness_s)
            want_points = sum(len(s.device_ids) for s in published)
            got: dict[tuple[str, str, int], int] = {}

            def landed() -> bool:
                nonlocal got
                got = device_windows_in_influx(settings)
                return count_device_samples(settings) == want_points and got == want

            wait_until(landed, 180, alive)
            caught_up_s = time.monotonic() - finished_at
            assert count_device_samples(settings) == want_points
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            extra = {k: v for k, v in got.items() if k not in want}
            assert not missing and not extra, (
                f"{len(missing)} windows wrong or missing (want, got): "
                f"{sorted((k, v, got.get(k)) for k, v in missing.items())[:10]}; "
                f"{len(extra)} unexpected: {sorted(extra.items())[:10]}"
            )
            alive()  # the same process throughout: no restart, no manual action
            print(
                f"\ninflux outage: {len(published)} samples / {want_points} device-samples, "
                f"{up_tick - down_tick} ticks published during {up_at - down_at:.1f} s down; "
                f"all {want_points} points and {len(want)} device windows exact "
                f"{caught_up_s:.1f} s after the last tick (InfluxDB back for "
                f"{finished_at - up_at:.1f} s by then)"
            )
        finally:
            publisher.finish(0)
            stop_worker(worker)
