"""The InfluxDB sink against the real server: refused lines are isolated and handed over for
dead-lettering while the rest of the batch lands; a missing database is waited for, not
dead-lettered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.schemas import DeadLetter, codec
from accelpilot.schemas.topics import DLQ, SAMPLES
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.influx_lines import sample_lines
from accelpilot.streams.influx_sink import InfluxSink, RejectedLine
from tests.service.kafka_io import consume
from tests.service.pipeline_checks import (
    device_windows_in_influx,
    expected_device_windows,
    wait_until,
)
from tests.service.test_first_slice import _start_worker, stop_worker

pytestmark = [pytest.mark.service]


def _count(settings: Settings, query: str) -> int:
    body = influxql(settings.influx.url, query, settings.influx.database)
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_a_field_type_conflict_is_isolated_and_the_rest_of_the_batch_lands(
    service_settings: Settings,
) -> None:
    settings = service_settings
    start_ns = (time.time_ns() - 3600 * 10**9) // 10**9 * 10**9
    # Someone already wrote `clock_sm_mhz` as an integer field in this shard: InfluxDB now
    # refuses every float value of it on `device_sample`.
    influxql(settings.influx.url, f'CREATE DATABASE "{settings.influx.database}"')
    seeded = f"device_sample,host=other,device=other/gpu0,kind=gpu clock_sm_mhz=1500i {start_ns}"
    ok = [
        line
        for s in synthetic_samples("node-a", n_devices=4, n_ticks=100, start_ns=start_ns)
        for line in sample_lines(s, cluster=settings.worker.cluster)
    ]
    # Lines of node-b carry clock_sm_mhz (a float): 3 ticks x 2 devices, scattered in the batch.
    bad = [
        f"device_sample,host=node-b,device=node-b/gpu{d},kind=gpu clock_sm_mhz=1410.0,seq={k}i "
        f"{start_ns + k * 10**9}"
        for k in (3, 40, 97)
        for d in range(2)
    ]
    ok = [line.replace(",clock_sm_mhz=", ",clock_mhz_was=") for line in ok]  # no conflict
    unparsable = "device_sample,host=node-c power_w=oops 17000000000"
    batch = ok[:50] + bad[:2] + ok[50:200] + [unparsable] + bad[2:4] + ok[200:] + bad[4:]

    rejected: list[RejectedLine] = []

    async def collect(lines: list[RejectedLine]) -> None:
        rejected.extend(lines)

    async def run() -> InfluxSink:
        sink = InfluxSink(settings.influx, on_rejected=collect)
        await sink.write([seeded])
        await asyncio.wait_for(sink.write(batch), 60)  # it returns: no stall on a 4xx
        await sink.stop()
        return sink

    sink = asyncio.run(run())
    assert sorted(r.line for r in rejected) == sorted([*bad, unparsable])
    by_line = {r.line: r for r in rejected}
    for line in bad:
        r = by_line[line]
        assert (r.status, r.reason) == (400, "influx-field-type-conflict")
        assert 'input field "clock_sm_mhz" on measurement "device_sample" is type float' in r.error
    assert by_line[unparsable].reason == "influx-unparsable"
    assert sink.points_rejected == len(bad) + 1
    assert _count(settings, "SELECT count(seq) FROM device_sample WHERE host = 'node-a'") == len(ok)
    assert _count(settings, "SELECT count(seq) FROM device_sample WHERE host = 'node-b'") == 0


def test_a_missing_database_is_retried_until_it_exists_not_dead_lettered(
    service_settings: Settings,
) -> None:
    settings = service_settings
    influxql(settings.influx.url, f'DROP DATABASE "{settings.influx.database}"')
    start_ns = (time.time_ns() - 60 * 10**9) // 10**9 * 10**9
    lines = [
        line
        for s in synthetic_samples("node-a", n_devices=2, n_ticks=10, start_ns=start_ns)
        for line in sample_lines(s, cluster=settings.worker.cluster)
    ]
    rejected: list[RejectedLine] = []

    async def collect(got: list[RejectedLine]) -> None:
        rejected.extend(got)

    async def run() -> InfluxSink:
        sink = InfluxSink(settings.influx, on_rejected=collect, max_backoff_s=0.5)
        task = asyncio.create_task(sink.write(lines))
        while sink.write_failures < 2:  # InfluxDB said 404 twice: still waiting
            assert not task.done()
            await asyncio.sleep(0.05)
        influxql(settings.influx.url, f'CREATE DATABASE "{settings.influx.database}"')
        await asyncio.wait_for(task, 60)
        await sink.stop()
        return sink

    sink = asyncio.run(run())
    assert rejected == []
    assert sink.points_written == len(lines)
    assert _count(settings, "SELECT count(seq) FROM device_sample") == len(lines)


@pytest.mark.slow
def test_the_worker_dead_letters_refused_lines_and_keeps_going(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings
    w = settings.worker
    start_ns = (time.time_ns() - 600 * 10**9) // 60 // 10**9 * 60 * 10**9
    # `clock_sm_mhz` already exists as an integer: every sample line of this shard is refused.
    influxql(
        settings.influx.url,
        f'CREATE DATABASE "{settings.influx.database}"',
    )
    asyncio.run(
        _write_once(settings, f"device_sample,host=x,device=x/gpu0 clock_sm_mhz=1i {start_ns}")
    )
    samples = list(synthetic_samples("node-a", n_devices=4, n_ticks=90, start_ns=start_ns))
    worker = _start_worker(settings, tmp_path)
    try:
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            for s in samples:
                pub.send(s.host_id, s)
        cluster = w.cluster
        want_lines = {line for s in samples for line in sample_lines(s, cluster=cluster)}
        raw = consume(settings, DLQ, lambda got: len(got) >= len(want_lines), 90)
        letters = [codec.decode(DeadLetter, b) for b in raw]
        assert {d.original.decode() for d in letters} == want_lines
        assert {(d.reason, d.stage, d.source_topic) for d in letters} == {
            ("influx-field-type-conflict", "influx-sink", settings.topic(SAMPLES))
        }
        assert all('input field "clock_sm_mhz"' in d.detail for d in letters)
        # The stream went on: every closed aggregate window landed, exactly.
        want = expected_device_windows(samples, w.windows_s, w.allowed_lateness_s)
        assert wait_until(lambda: device_windows_in_influx(settings) == want, 60, lambda: None)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop_worker(worker)


async def _write_once(settings: Settings, line: str) -> None:
    sink = InfluxSink(settings.influx)
    await sink.write([line])
    await sink.stop()
