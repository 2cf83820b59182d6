"""Acknowledge a partition's events in the order they arrived, whatever order they are released in.

The worker releases events out of order (streams/acks.py: a host's samples wait for its own
windows, so one host's later samples can be released before another host's earlier ones). faust
is meant to commit only the acknowledged prefix of each partition, but faust-streaming 0.15.3's
``Consumer._new_offset`` checks the head of the acked list off by one (``min(acked) - committed
> 1``, where ``committed`` is already the next offset to read) and not at all before the first
commit: with offset 31 unacked and 32 acked it commits 33, and with nothing committed yet and
[5, 6, 7] acked it commits 8. The skipped events were never processed to the end, and a worker
that crashes then never reads them again: their samples are missing from the rebuilt windows
(found by tests/service/test_worker_restarts.py). Acking in arrival order never leaves such a gap.

Pure bookkeeping; no faust import. Events need ``event.message.tp``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any


class InOrderAcks:
    def __init__(self) -> None:
        self._arrived: dict[Any, deque[Any]] = {}  # tp -> events in arrival order
        # id() of events held in ``_arrived`` (the deques keep them alive: ids stay unique).
        self._tracked: set[int] = set()
        self._released: set[int] = set()  # of those, the ones released

    def arrived(self, events: Iterable[Any]) -> None:
        """Record a batch's events (in the order the stream delivered them)."""
        for event in events:
            self._arrived.setdefault(event.message.tp, deque()).append(event)
            self._tracked.add(id(event))

    def release(self, events: Iterable[Any]) -> list[Any]:
        """Mark ``events`` done; return those that may be acknowledged now, in arrival order
        per partition: each partition's longest fully released prefix."""
        touched = set()
        for event in events:
            if id(event) in self._tracked:  # else: from before a reset, read again since
                self._released.add(id(event))
                touched.add(event.message.tp)
        out = []
        for tp in touched:
            queue = self._arrived.get(tp)
            while queue and id(queue[0]) in self._released:
                event = queue.popleft()
                self._released.discard(id(event))
                self._tracked.discard(id(event))
                out.append(event)
        return out

    def reset(self) -> None:
        """Forget everything (a rebalance: every partition is read again from its committed
        offset, so events from before it must not be acknowledged)."""
        self._arrived.clear()
        self._tracked.clear()
        self._released.clear()

    @property
    def waiting(self) -> int:
        """Events arrived and not yet acknowledged."""
        return sum(len(q) for q in self._arrived.values())
