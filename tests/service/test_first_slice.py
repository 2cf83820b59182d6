"""The first end-to-end slice, for real: simulated host -> Kafka -> faust worker (own process)
-> InfluxDB, with malformed messages dead-lettered and the worker carrying on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.schemas import DeadLetter, codec
from accelpilot.schemas.topics import DLQ, SAMPLES
from accelpilot.stack.influxdb import influxql
from tests.conftest import write_config
from tests.reaper import reaped
from tests.service.influx_private import free_ports
from tests.service.kafka_io import consume

pytestmark = [pytest.mark.service, pytest.mark.slow]

N_TICKS = 150
N_DEVICES = 8


def _malformed(valid: bytes) -> list[tuple[bytes, str]]:
    """(payload, expected DLQ reason) pairs, each wrong in one way."""
    doc = msgspec.json.decode(valid)

    def variant(**changes: object) -> bytes:
        return msgspec.json.encode({**doc, **changes})

    neg = {**doc["metrics"], "power_w": [-5.0, *doc["metrics"]["power_w"][1:]]}
    short = {**doc["metrics"], "temp_c": doc["metrics"]["temp_c"][:3]}
    return [
        (b"\x00\xffnot json at all", "not-json"),
        (b'{"v": 1, "host_id": "h"', "not-json"),
        (variant(v=2, brand_new_field=True), "unsupported-version"),
        (variant(ts_ns="yesterday"), "schema"),
        (variant(metrics=neg), "out-of-range"),
        (variant(metrics=short), "column-length"),
        (variant(metrics={**doc["metrics"], "warp_factor": [1.0] * N_DEVICES}), "unknown-metric"),
        (variant(ts_ns=time.time_ns() + 3_600 * 10**9), "future-timestamp"),
    ]


def _start_worker(
    settings: Settings, tmp_path: Path, log_level: str = "warning"
) -> subprocess.Popen[bytes]:
    config = write_config(settings, tmp_path / "worker.toml")
    log = (tmp_path / "worker.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELPILOT_")}
    return reaped(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelpilot.cli",
                "worker",
                "--config",
                str(config),
                "-l",
                log_level,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    )


def stop_worker(worker: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """SIGTERM the worker's process group (it lets in-flight effects land, commits, leaves);
    SIGKILL if it has not exited within ``timeout_s``."""
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as {'name{label="value",...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _count_points(settings: Settings) -> int:
    body = influxql(
        settings.influx.url, "SELECT count(seq) FROM device_sample", settings.influx.database
    )
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_samples_reach_influxdb_exactly_and_bad_input_is_dead_lettered(
    service_settings: Settings, tmp_path: Path
) -> None:
    (metrics_port,) = free_ports(1)
    settings = service_settings.model_copy(
        update={"worker": service_settings.worker.model_copy(update={"metrics_port": metrics_port})}
    )
    worker = _start_worker(settings, tmp_path)
    try:
        start_ns = (time.time_ns() - N_TICKS * 10**9) // 10**9 * 10**9
        samples = list(
            synthetic_samples(
                "node-a", n_devices=N_DEVICES, n_ticks=N_TICKS, start_ns=start_ns, seed=3
            )
        )
        bad = _malformed(codec.encode(samples[0]))
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            for i, sample in enumerate(samples):
                pub.send(sample.host_id, sample)
                if i % 15 == 7 and bad:  # malformed messages in the middle of the valid stream
                    pub.send_raw(b"node-a", bad[len(bad) - 1 - (i // 15) % len(bad)][0])
            for payload, _ in bad:  # and all of them once more, then valid traffic after them
                pub.send_raw(b"node-a", payload)
            late = list(
                synthetic_samples("node-b", n_devices=2, n_ticks=5, start_ns=start_ns, seed=4)
            )
            for sample in late:
                pub.send(sample.host_id, sample)

        want_points = N_TICKS * N_DEVICES + 5 * 2
        deadline = time.monotonic() + 120
        while _count_points(settings) < want_points and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _count_points(settings) == want_points

        # Every value, exactly: read node-a's points back and compare with what was sent.
        body = influxql(
            settings.influx.url,
            "SELECT power_w, temp_c, util_compute_pct, energy_j, seq FROM device_sample "
            "WHERE host = 'node-a' GROUP BY device",
            settings.influx.database,
        )
        got = {}
        for series in body["results"][0]["series"]:
            device = series["tags"]["device"]
            for ts, power, temp, util, energy, seq in series["values"]:
                got[(device, ts)] = (power, temp, util, energy, seq)
        want = {}
        for s in samples:
            m = s.metrics
            for i, device in enumerate(s.device_ids):
                want[(device, s.ts_ns)] = (
                    m["power_w"][i],
                    m["temp_c"][i],
                    m["util_compute_pct"][i],
                    m["energy_j"][i],
                    s.seq,
                )
        assert got == want

        # Aggregates: every closed 10 s window of node-a holds exactly its samples, per device.
        window_ns, closed_until = 10 * 10**9, samples[-1].ts_ns - 5 * 10**9
        closed = [s for s in samples if (s.ts_ns // window_ns + 1) * window_ns <= closed_until]
        want_count = len(closed) * N_DEVICES
        query = (
            "SELECT sum(sample_count) FROM device_agg WHERE \"window\" = '10s' AND host = 'node-a'"
        )
        deadline = time.monotonic() + 30
        got_count = 0
        while time.monotonic() < deadline:
            series = influxql(settings.influx.url, query, settings.influx.database)["results"][0]
            got_count = int(series["series"][0]["values"][0][1]) if "series" in series else 0
            if got_count >= want_count:
                break
            time.sleep(0.5)
        assert got_count == want_count

        # Every malformed message is in the DLQ with its original bytes and reason.
        sent_bad = [
            bad[len(bad) - 1 - (i // 15) % len(bad)] for i in range(N_TICKS) if i % 15 == 7
        ] + bad
        raw_letters = consume(settings, DLQ, lambda got: len(got) >= len(sent_bad), 60)
        letters = [codec.decode(DeadLetter, b) for b in raw_letters]
        assert sorted((d.original, d.reason) for d in letters) == sorted(sent_bad)
        assert all(
            d.source_topic == settings.topic(SAMPLES) and d.stage == "ingest" for d in letters
        )
        assert len({(d.partition, d.offset) for d in letters}) == len(letters)
        assert worker.poll() is None  # the worker kept going

        # Its /metrics say the same: records by outcome, device-samples, lines landed, freshness.
        m = _scrape(metrics_port)
        assert m['accelpilot_worker_records_total{outcome="accepted"}'] == len(samples) + 5
        assert m['accelpilot_worker_records_total{outcome="dead_lettered"}'] == len(sent_bad)
        assert m["accelpilot_worker_device_samples_total"] == want_points
        assert m["accelpilot_worker_influx_lines_total"] >= want_points
        assert m["accelpilot_worker_influx_write_seconds_count"] >= 1
        assert m["accelpilot_worker_batch_seconds_count"] >= 1
        assert m["accelpilot_worker_aggregates_total"] >= 1
        newest_s = max(s.ts_ns for s in samples + late) / 1e9
        assert m["accelpilot_worker_landed_sample_timestamp_seconds"] == pytest.approx(newest_s)
        assert m["accelpilot_worker_in_flight_bytes"] >= 0
        assert m["accelpilot_worker_influx_lines_rejected_total"] == 0
    finally:
        stop_worker(worker, 30)
