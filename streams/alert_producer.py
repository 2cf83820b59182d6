"""The worker's producer for alerts: a connection of their own, so an alert never queues behind
the aggregates' produce requests.

aiokafka's sender keeps **one produce request in flight per broker** (``Sender._in_flight``
holds a node until its request is answered). The worker's main producer sends ~67,000 derived
payloads per million device-samples in requests of up to 512 KiB; an alert handed to that
producer waits for the request in flight to be answered, and then rides in the next one with
whatever piled up meanwhile. On this 2-core VM under load that wait was most of the slowest
alerts' time (docs/streams.md, Round 8: the worker idle in epoll before the alert was sent).
Alerts are rare and small, so a second producer whose only traffic is alerts has its request
slot free when one comes.

Same guarantees as the main producer: ``acks=all``, Kafka's default partitioner (murmur2 of
the key, remembered per key: streams/partitioner.py), so a host's alerts go to the partition
every other client computes for that host.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from accelpilot.streams.partitioner import CachingPartitioner

log = logging.getLogger(__name__)

#: How long ``start`` waits for the alert topic's partitions.
METADATA_WAIT_S = 5.0


class AlertProducer:
    """An :class:`AIOKafkaProducer` with faust's ``send`` signature (the ingest loop's
    ``Producer``): ``await send(...)`` queues the message and gives its delivery future."""

    def __init__(
        self, bootstrap_servers: str, topic: str, client_id: str = "accelpilot-alerts"
    ) -> None:
        self.topic = topic
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "linger_ms": 0,
            "partitioner": CachingPartitioner(),
        }
        self._producer: AIOKafkaProducer | None = None  # made in start(): inside the event loop

    async def start(self) -> None:
        """Connect and learn the alert topic's partitions now: the first alert does not wait
        for a metadata round trip."""
        self._producer = producer = AIOKafkaProducer(**self._options)
        await producer.start()
        try:
            await asyncio.wait_for(producer.partitions_for(self.topic), METADATA_WAIT_S)
        except (KafkaError, TimeoutError) as e:
            # Not fatal: the first alert asks again (and fails loudly if the topic is missing).
            log.warning(
                "no partitions known yet for %s (%s): create the topic, or let the broker "
                "auto-create it; the first alert will ask again",
                self.topic,
                e,
            )

    async def stop(self) -> None:
        """Deliver what was handed over (``AIOKafkaProducer.stop`` flushes), then close."""
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Any:
        if self._producer is None:
            raise RuntimeError("AlertProducer.send before start()")
        return await self._producer.send(
            topic,
            value=value,
            key=key,
            partition=partition,
            timestamp_ms=None if timestamp is None else int(timestamp * 1000),
            headers=headers,
        )
