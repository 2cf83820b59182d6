"""InfluxDB frozen (SIGSTOP: connections accepted, nothing answered, as in a long snapshot or a
stalled disk) while the stream goes on: detection and alerts carry on past the stalled writes,
and once it thaws every point lands exactly once.

The worker runs ahead of InfluxDB up to ``worker.in_flight_bytes`` of line protocol; a bound of
a few batches (as before 2026-12-07) held the reader, and detection with it, within a second or
two of the freeze. The test runs its own influxd (free ports): the shared one is never frozen.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.config import Settings
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.topics import ALERTS, SAMPLES
from tests.service.influx_private import private_influx
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

TICKS_PER_S = 2.0  # demo-fleet's thermal fault (node1/gpu3, tick 12) comes ~6 s into the freeze
TICKS = 40
ALERT_WITHIN_S = 25.0  # of the freeze; InfluxDB stays frozen until the alert came (or this)


def test_alerts_keep_flowing_while_influxdb_is_frozen_and_nothing_is_lost(
    service_settings: Settings, tmp_path: Path
) -> None:
    from kafka import KafkaConsumer

    with private_influx(service_settings, database="freeze") as (settings, influx):
        w = settings.worker
        start_ns = time.time_ns() // 10**9 * 10**9
        log = tmp_path / "worker.log"
        consumer = KafkaConsumer(
            settings.topic(ALERTS),
            bootstrap_servers=settings.kafka.bootstrap_servers,
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        consumer.poll(timeout_ms=1000)  # assigned and positioned at the end before any alert
        worker = _start_worker(settings, tmp_path)

        def alive() -> None:
            assert worker.poll() is None, "worker died:\n" + log.read_text()[-3000:]

        # Tick 0 alone first: the worker is up and writing before the freeze and the stream.
        ticks = fleet_ticks(start_ns)
        first = next(ticks)
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            for sample in first:
                pub.send(sample.host_id, sample)
        publisher = SteadyPublisher(settings, ticks, TICKS_PER_S, TICKS - 1)
        pid = influx.pid()
        assert pid is not None
        frozen = False
        try:
            assert wait_until(lambda: count_device_samples(settings) > 0, 90, alive)
            os.kill(pid, signal.SIGSTOP)
            frozen, frozen_at = True, time.monotonic()
            publisher.start()
            thermal: Alert | None = None
            while thermal is None and time.monotonic() - frozen_at < ALERT_WITHIN_S:
                alive()
                for batch in consumer.poll(timeout_ms=500).values():
                    for record in batch:
                        a = codec.decode(Alert, record.value)
                        if (a.kind, a.device_id, a.state) == ("thermal", "node1/gpu3", "firing"):
                            thermal = a
            alert_after_s = time.monotonic() - frozen_at
            os.kill(pid, signal.SIGCONT)
            frozen = False
            assert thermal is not None, (
                f"no thermal alert within {ALERT_WITHIN_S:.0f} s of freezing InfluxDB: "
                "detection waited for the stalled writes\n" + log.read_text()[-3000:]
            )
            published = first + publisher.finish()
            want = expected_device_windows(published, w.windows_s, w.allowed_lateness_s)
            want_points = sum(len(s.device_ids) for s in published)
            got: dict[tuple[str, str, int], int] = {}

            def landed() -> bool:
                nonlocal got
                got = device_windows_in_influx(settings)
                return count_device_samples(settings) == want_points and got == want

            wait_until(landed, 180, alive)
            assert count_device_samples(settings) == want_points
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            extra = {k: v for k, v in got.items() if k not in want}
            assert not missing and not extra, (
                f"{len(missing)} windows wrong or missing, {len(extra)} unexpected: "
                f"{sorted(missing.items())[:5]} {sorted(extra.items())[:5]}"
            )
            alive()
            print(
                f"\ninflux frozen from tick 1: the thermal alert (tick "
                f"{(thermal.ts_ns - start_ns) // 10**9}) arrived {alert_after_s:.1f} s into "
                f"the freeze; all {want_points} points and {len(want)} device windows exact"
            )
        finally:
            if frozen:
                os.kill(pid, signal.SIGCONT)
            consumer.close()
            publisher.finish(0)
            stop_worker(worker)
