"""Reading a test's topic back from the real broker (one helper for every service test)."""

from __future__ import annotations

import time
from collections.abc import Callable

from accelpilot.config import Settings


def consume(
    settings: Settings,
    topic: str,
    until: Callable[[list[bytes]], bool],
    timeout_s: float,
) -> list[bytes]:
    """Values of ``topic`` (logical name) from the beginning, until ``until(values)`` holds or
    ``timeout_s`` passes; polls, so it also stops on a topic that keeps growing."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(got) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in batch)
    finally:
        consumer.close()
    return got
