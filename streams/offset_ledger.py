"""Which offset may a consumer commit? The end of each partition's longest fully processed prefix.

The worker finishes records out of order: a host's samples wait for its own windows
(streams/acks.py), so one host's later samples are often done before another host's earlier
ones on the same partition. Kafka keeps one committed offset per partition, so the ledger
commits only past records that are done *and* preceded only by records that are done.

Each record gets a token ``(generation, partition, offset)`` when it arrives. :meth:`reset` (the
partitions were revoked: the consumer reads them again from the committed offsets) starts a new
generation, and tokens of an older one are ignored when released: a batch still in flight at a
rebalance can never move a commit.

Offsets are taken in arrival order, not by arithmetic: a partition's offsets may have holes
(transaction markers, compaction), and the next offset to commit is the one after the last
record of the prefix.

Pure bookkeeping: no Kafka here (streams/batch_consumer.py commits what this says).

>>> ledger = OffsetLedger()
>>> a, b, c = (ledger.arrived(0, offset) for offset in (5, 6, 7))
>>> ledger.release([b, c])  # 5 is not done: nothing may be committed yet
>>> ledger.to_commit()
{}
>>> ledger.release([a])
>>> ledger.to_commit()
{0: 8}
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

#: (generation, partition, offset)
Token = tuple[int, Hashable, int]


class OffsetLedger:
    def __init__(self) -> None:
        self.generation = 0
        self._arrived: dict[Hashable, deque[int]] = {}  # per partition, offsets in arrival order
        self._done: dict[Hashable, set[int]] = {}  # of those, the ones released
        self._position: dict[Hashable, int] = {}  # next offset to read after the done prefix
        self._committed: dict[Hashable, int] = {}

    def arrived(self, partition: Hashable, offset: int) -> Token:
        """Record one record (in the order the consumer returned them); return its token."""
        self._arrived.setdefault(partition, deque()).append(offset)
        return (self.generation, partition, offset)

    def release(self, tokens: Iterable[Token]) -> None:
        """Mark records done (tokens of an earlier generation are ignored)."""
        touched = set()
        for generation, partition, offset in tokens:
            if generation == self.generation:
                self._done.setdefault(partition, set()).add(offset)
                touched.add(partition)
        for partition in touched:
            queue, done = self._arrived.get(partition), self._done[partition]
            while queue and queue[0] in done:
                offset = queue.popleft()
                done.discard(offset)
                self._position[partition] = offset + 1

    def to_commit(self) -> dict[Hashable, int]:
        """Per partition, the offset to commit now (only those that moved since committed)."""
        return {p: o for p, o in self._position.items() if self._committed.get(p) != o}

    def committed(self, offsets: dict[Hashable, int]) -> None:
        """The consumer committed ``offsets``."""
        self._committed.update(offsets)

    def reset(self) -> None:
        """Forget everything and start a new generation (partitions revoked)."""
        self.generation += 1
        self._arrived.clear()
        self._done.clear()
        self._position.clear()
        self._committed.clear()

    @property
    def waiting(self) -> int:
        """Records arrived and not yet part of a committable prefix."""
        return sum(len(q) for q in self._arrived.values())
