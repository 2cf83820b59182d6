"""Where the per-host records (streams/host_state.py) live: a compacted topic of their own.

One partition per partition of ``telemetry.samples``: a host's record is written to the
partition its samples come from, so the worker that is assigned samples partition *p* loads the
records of its hosts from record partition *p* (:meth:`HostStateReader.load`, called before the
first sample of the new assignment is fetched). The latest value of a key wins, as compaction
keeps it. Writes go through the worker's producer (streams/ingest_loop.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from accelpilot.errors import SchemaError
from accelpilot.streams.host_state import HostRecord, decode_record

log = logging.getLogger(__name__)


def host_state_topic_name(app_id: str) -> str:
    return f"{app_id}-host-state"


class HostStateReader:
    def __init__(self, bootstrap_servers: str, topic: str, load_timeout_s: float = 60.0) -> None:
        self.topic = topic
        self.load_timeout_s = load_timeout_s
        self.bootstrap_servers = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # Made here, not in __init__: aiokafka binds its client to the running loop.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def load(self, partitions: Iterable[int]) -> dict[str, HostRecord]:
        """Every host record on ``partitions``, read from the beginning to the current end."""
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("HostStateReader.start() first")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[str, HostRecord] = {}
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"host records on {self.topic} not read within {self.load_timeout_s} s: "
                    "check the broker"
                )
            data = await consumer.getmany(*behind, timeout_ms=500)
            for records in data.values():
                for record in records:
                    if record.key is None:
                        continue
                    host_id = record.key.decode()
                    if record.value is None:  # a tombstone
                        out.pop(host_id, None)
                        continue
                    try:
                        out[host_id] = decode_record(record.value)
                    except (SchemaError, ValueError) as e:
                        log.error("unreadable host record %r on %s: %s", host_id, self.topic, e)
        return out
