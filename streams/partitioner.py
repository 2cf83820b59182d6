"""The worker producer's partitioner: Kafka's default (murmur2 of the key), remembered per key.

aiokafka's :class:`~aiokafka.partitioner.DefaultPartitioner` hashes every key in pure Python:
~2 % of the worker's CPU in a drain, where the keys are a few thousand host ids sent again and
again (aggregates, anomalies, roll-up inputs). The partition of a keyed message depends only on
the key and the topic's partitions, so it is computed once per (key, partitions) and looked up
after that; messages without a key go where the default sends them (a random available
partition). The choice is the default's, so every client (the collectors' kafka-python, the
Java clients) agrees on which partition a host's messages are in.

>>> from aiokafka.partitioner import DefaultPartitioner
>>> p = CachingPartitioner()
>>> p(b"node0", [0, 1, 2, 3], [0, 1, 2, 3]) == DefaultPartitioner()(b"node0", [0, 1, 2, 3], [])
True
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner

#: Keys remembered (a worker's hosts x a few partition counts); the memory is dropped when full.
MAX_KEYS = 200_000


class CachingPartitioner:
    """Kafka's default partitioner with its answer for each keyed message remembered."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._default = DefaultPartitioner()
        self._known: dict[tuple[bytes, tuple[int, ...]], int] = {}
        self.max_keys = max_keys

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        at = (key, tuple(all_partitions))
        partition = self._known.get(at)
        if partition is None:
            if len(self._known) >= self.max_keys:
                self._known.clear()
            partition = self._known[at] = int(self._default(key, all_partitions, available))
        return partition
