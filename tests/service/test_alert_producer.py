"""The alerts' own producer against the real broker: what it delivers lands on the partition
Kafka's default partitioner gives the key (the partition the collectors' kafka-python and any
Java client compute for that host), with the timestamp given or the send time, and ``stop``
delivers what was handed over."""

from __future__ import annotations

import asyncio
import time

import pytest

from accelpilot.config import Settings
from accelpilot.schemas.topics import ALERTS
from accelpilot.streams.alert_producer import AlertProducer

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

HOSTS = [f"node{i:03d}" for i in range(12)]


async def _send_all(settings: Settings, stamp_s: float) -> list[object]:
    topic = settings.topic(ALERTS)
    producer = AlertProducer(settings.kafka.bootstrap_servers, topic, client_id="test-alerts")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, h.encode(), f"alert-{h}".encode(), None, None, None)
            for h in HOSTS
        ]
        delivered = list(await asyncio.gather(*futures))
        # Handed over, not awaited: stop() must still deliver it.
        await producer.send(topic, b"late", b"alert-late", None, stamp_s, None)
    finally:
        await producer.stop()
    return delivered


def test_alerts_land_on_the_default_partition_of_their_key_and_stop_flushes(
    service_settings: Settings,
) -> None:
    from kafka import KafkaConsumer
    from kafka.partitioner.default import murmur2

    settings = service_settings
    before_ms = int(time.time() * 1000)
    stamp_s = 1_700_000_000.5
    delivered = asyncio.run(_send_all(settings, stamp_s))
    assert len(delivered) == len(HOSTS)

    consumer = KafkaConsumer(
        settings.topic(ALERTS),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records = []
    deadline = time.monotonic() + 30
    try:
        while len(records) < len(HOSTS) + 1 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        n_partitions = len(consumer.partitions_for_topic(settings.topic(ALERTS)) or ())
    finally:
        consumer.close()

    by_key = {r.key: r for r in records}
    assert sorted(by_key) == sorted([h.encode() for h in HOSTS] + [b"late"])
    assert n_partitions == 3
    for key, r in by_key.items():
        assert r.value == b"alert-" + key
        # Kafka's default: murmur2 of the key, positive, modulo the partitions.
        assert r.partition == (murmur2(key) & 0x7FFFFFFF) % n_partitions, key
    assert by_key[b"late"].timestamp == int(stamp_s * 1000)
    for h in HOSTS:
        assert by_key[h.encode()].timestamp >= before_ms
