"""The naive design, for `accelpilot bench pipeline` to compare against (never used in production).

One Kafka message per metric per device (JSON ``{host, device, metric, value, ts_ns}``), read
with kafka-python, one influxdb-client ``Point`` object per message, written with the
SYNCHRONOUS write API in batches: the classic shape of a slow Python telemetry pipeline
(ARCHITECTURE.md, "Batches, not objects").

Run as ``python -m accelpilot.streams.bench_naive --bootstrap B --topic T --url U --bucket DB/rp``
until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

from accelpilot.schemas.topics import GROUP_METADATA_MAX_AGE_MS

NAIVE_MEASUREMENT = "device_sample"


def naive_messages(sample: Any) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one HostSample in the naive design: one message per metric."""
    out = []
    key = sample.host_id.encode()
    for name, column in sample.metrics.items():
        for device, value in zip(sample.device_ids, column, strict=True):
            if value is None:
                continue
            doc = {
                "host": sample.host_id,
                "device": device,
                "metric": name,
                "value": value,
                "ts_ns": sample.ts_ns,
            }
            out.append((key, json.dumps(doc).encode()))
    return out


def run(argv: list[str] | None = None) -> None:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS
    from kafka import KafkaConsumer, TopicPartition

    p = argparse.ArgumentParser(prog="bench_naive")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", default="bench-naive")  # accepted, unused: no consumer group
    p.add_argument("--url", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--token", default="accelpilot:accelpilot")
    p.add_argument("--org", default="-")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--flush-s", type=float, default=0.2)
    args = p.parse_args(argv)

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Every partition assigned by hand, no consumer group: a group member that joined before
    # the topic's metadata was served could hold no partitions for the whole drain (seen in CI
    # twice, 300 s of a busy poll loop and nothing written), and group coordination is not
    # what this design is measured for.
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=args.batch,
        metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
    )
    deadline = time.monotonic() + 60.0
    partitions = consumer.partitions_for_topic(args.topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.2)
        consumer.topics()  # refreshes the cluster metadata
        partitions = consumer.partitions_for_topic(args.topic)
    if not partitions:
        raise SystemExit(f"topic {args.topic!r} has no partitions after 60 s")
    consumer.assign([TopicPartition(args.topic, p) for p in sorted(partitions)])
    client = InfluxDBClient(url=args.url, token=args.token, org=args.org, timeout=30_000)
    write_api = client.write_api(write_options=SYNCHRONOUS)
    points: list[Any] = []
    last_flush = time.monotonic()
    try:
        while not stop:
            polled = consumer.poll(timeout_ms=100, max_records=args.batch)
            for records in polled.values():
                for record in records:
                    doc = json.loads(record.value)
                    points.append(
                        Point(NAIVE_MEASUREMENT)
                        .tag("host", doc["host"])
                        .tag("device", doc["device"])
                        .field(doc["metric"], float(doc["value"]))
                        .time(doc["ts_ns"], WritePrecision.NS)
                    )
            now = time.monotonic()
            if points and (len(points) >= args.batch or now - last_flush >= args.flush_s):
                write_api.write(bucket=args.bucket, record=points)
                points = []
                last_flush = now
        if points:
            write_api.write(bucket=args.bucket, record=points)
    finally:
        consumer.close()
        client.close()


if __name__ == "__main__":
    run()
