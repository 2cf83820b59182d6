"""10,000 fuzzed or malformed messages mixed into a valid stream: the worker never crashes, each
bad one is in the DLQ with a reason, and every valid sample lands in InfluxDB."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.schemas import DeadLetter, codec
from accelpilot.schemas.topics import DLQ, SAMPLES
from accelpilot.streams.ingest import ingest_sample
from tests.service.kafka_io import consume
from tests.service.test_first_slice import _count_points, _start_worker, stop_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]

N_BAD = 10_000
N_GOOD = 300


def _fuzz(valid: bytes, rng: random.Random) -> bytes:
    """One malformed message: byte flips, truncation, type swaps, bad values, garbage."""
    doc = msgspec.json.decode(valid)
    choice = rng.randrange(8)
    if choice == 0:
        b = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if choice == 1:
        return valid[: rng.randrange(1, len(valid) - 1)]
    if choice == 2:
        return rng.randbytes(rng.randint(0, 200))
    if choice == 3:
        key = rng.choice(["ts_ns", "seq", "device_ids", "metrics", "host_id", "interval_s"])
        doc[key] = rng.choice(["x", None, [], {}, -1.5, True])
        return msgspec.json.encode(doc)
    if choice == 4:
        doc["metrics"]["power_w"][0] = -rng.uniform(1, 1e6)
        return msgspec.json.encode(doc)
    if choice == 5:
        doc["v"] = rng.randint(2, 99)
        return msgspec.json.encode(doc)
    if choice == 6:
        doc["metrics"][f"bogus_{rng.randrange(1000)}"] = [1.0] * len(doc["device_ids"])
        return msgspec.json.encode(doc)
    doc["ts_ns"] = time.time_ns() + rng.randint(3_600, 10**6) * 10**9
    return msgspec.json.encode(doc)


def test_fuzzed_messages_never_crash_the_worker(service_settings: Settings, tmp_path: Path) -> None:
    settings = service_settings
    rng = random.Random(7)
    start_ns = (time.time_ns() - N_GOOD * 10**9) // 10**9 * 10**9
    good = list(synthetic_samples("fuzz-host", n_devices=4, n_ticks=N_GOOD, start_ns=start_ns))
    template = codec.encode(good[0])
    bad = []
    while len(bad) < N_BAD:
        payload = _fuzz(template, rng)
        try:  # keep only messages the ingest stage must reject
            ingest_sample(payload, time.time_ns(), 300 * 10**9)
        except Exception:
            bad.append(payload)
    worker = _start_worker(settings, tmp_path)
    try:
        with KafkaPublisher(settings.kafka.bootstrap_servers, settings.topic(SAMPLES)) as pub:
            per_good = N_BAD // N_GOOD
            for i, sample in enumerate(good):
                pub.send(sample.host_id, sample)
                for payload in bad[i * per_good : (i + 1) * per_good]:
                    pub.send_raw(b"fuzz-host", payload)
            for payload in bad[N_GOOD * per_good :]:
                pub.send_raw(b"fuzz-host", payload)
        deadline = time.monotonic() + 180
        while _count_points(settings) < N_GOOD * 4 and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert _count_points(settings) == N_GOOD * 4

        raw_letters = consume(settings, DLQ, lambda got: len(got) >= N_BAD, 120)
        letters = [codec.decode(DeadLetter, b) for b in raw_letters]
        assert len(letters) == N_BAD
        assert sorted(d.original for d in letters) == sorted(bad)
        reasons = Counter(d.reason for d in letters)
        assert not any(r.startswith("internal-error") for r in reasons), reasons
        assert worker.poll() is None
    finally:
        stop_worker(worker)
