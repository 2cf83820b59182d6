"""A Kafka consumer of our own for the worker's hot input: batches, prefix commits, rebalance hooks.

Why not faust's consumer (the worker is still a faust app: its producer, topics, signals and the
other agents are faust's): faust-streaming 0.15.3's consumer path loses and duplicates records
around a rebalance, and commits past records that were never processed. Seen in our
tests/service/test_worker_restarts.py (docs/streams.md, "Why the samples bypass faust's
consumer"): when table recovery ends, ``perform_seek`` moves the read offset back to the
committed one while the drain loop is still handing over the records it had fetched; the record
in flight is dropped (its callback is cancelled by ``suspend_flow``), the rest are taken for a
gap (``_add_gap`` marks every offset from the committed one up to the current one as acked),
and the re-fetched records are dropped as already read except the last one, which is delivered
twice (``offset >= r_offset``). Its per-event path also costs ~140 us of CPU per record
(docs/streams.md, ``floors.faust_noop``), against ~6 us for aiokafka's ``getmany``.

What this gives instead:

- :meth:`BatchConsumer.batches` yields lists of ``(token, record)``, straight from aiokafka's
  ``getmany`` (at most ``batch_max`` records; waits up to ``within_s`` only when nothing is
  buffered; a batch smaller than ``batch_max`` waits ``linger_s`` for more).
- :meth:`BatchConsumer.release` marks records done; the consumer commits each partition's done
  prefix (streams/offset_ledger.py) at most every ``commit_interval_s``, at each rebalance and
  at stop. Auto-commit is off: nothing is committed that was not released.
- Rebalances (aiokafka's eager protocol: every partition is revoked, then the new assignment
  is given): ``on_revoked`` is awaited first (the worker lets its in-flight batches land), then
  the done prefix is committed and the ledger starts a new generation, so a batch still in
  flight can never move a commit; ``on_assigned`` is awaited before the first record of the new
  assignment is fetched (the worker loads its per-host state there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from accelpilot.streams.offset_ledger import OffsetLedger, Token

log = logging.getLogger(__name__)

#: Called with the partition numbers concerned.
RebalanceHook = Callable[[set[int]], Awaitable[None]]


async def _nothing(partitions: set[int]) -> None:
    return None


class BatchConsumer:
    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        batch_max: int,
        within_s: float,
        linger_s: float = 0.0,
        on_assigned: RebalanceHook = _nothing,
        on_revoked: RebalanceHook = _nothing,
        commit_interval_s: float = 1.0,
        session_timeout_s: float = 10.0,
        rebalance_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.batch_max = batch_max
        self.within_ms = max(1, round(within_s * 1000))
        self.linger_s = linger_s
        self.commit_interval_s = commit_interval_s
        self.ledger = OffsetLedger()
        self.assigned: set[int] = set()
        self.commits_failed_total = 0
        self.failure: BaseException | None = None  # what a rebalance hook raised
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._clock = clock
        self._last_commit = clock()
        self._config = dict(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=round(session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, round(session_timeout_s * 1000 / 3)),
            rebalance_timeout_ms=round(rebalance_timeout_s * 1000),
        )
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # Made here, not in __init__: aiokafka binds its client to the running loop.
        self._consumer = consumer = AIOKafkaConsumer(**self._config)
        consumer.subscribe([self.topic], listener=_Listener(self))
        await consumer.start()

    @property
    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("BatchConsumer.start() first")
        return self._consumer

    async def stop(self) -> None:
        """Commit the done prefix, then leave the group."""
        if self._consumer is None:
            return
        try:
            await self.commit()
        finally:
            await self._consumer.stop()

    async def batches(self) -> AsyncIterator[list[tuple[Token, Any]]]:
        """Batches of ``(token, record)`` in each partition's order; an empty list when nothing
        arrived within ``within_s`` (so the caller's clock-driven work still runs)."""
        consumer, ledger, batch_max = self._started, self.ledger, self.batch_max

        def tokens(data: dict[Any, list[Any]]) -> list[tuple[Token, Any]]:
            # Taken as soon as getmany returns (no await in between): a token's generation is
            # the assignment its record was fetched under.
            return [
                (ledger.arrived(tp.partition, record.offset), record)
                for tp, records in data.items()
                for record in records
            ]

        while True:
            data = await consumer.getmany(timeout_ms=self.within_ms, max_records=batch_max)
            batch = tokens(data)
            generation = ledger.generation
            n = len(batch)
            if 0 < n < batch_max and self.linger_s > 0:
                # A light load hands over a few records at a time: wait a moment for more, so
                # that per-batch costs are paid ~1/linger_s times a second, not per record.
                await asyncio.sleep(self.linger_s)
                more = await consumer.getmany(timeout_ms=0, max_records=batch_max - n)
                if ledger.generation != generation:
                    # A rebalance ended during the wait: what was fetched before it is read
                    # again from the committed offsets (aiokafka resets the positions of the
                    # new assignment). Handed over under the new generation it would be taken
                    # for new records, arriving before the re-read ones, and the ledger would
                    # commit past the re-read ones before they are done (records lost).
                    batch = []
                batch += tokens(more)
            if self.failure is not None:  # aiokafka only logs what a rebalance hook raised
                raise self.failure
            yield batch

    def release(self, tokens: Iterable[Token]) -> None:
        self.ledger.release(tokens)

    async def maybe_commit(self) -> None:
        """Commit if ``commit_interval_s`` has passed since the last commit."""
        if self._clock() - self._last_commit >= self.commit_interval_s:
            await self.commit()

    async def commit(self) -> None:
        """Commit each partition's done prefix. A failure is logged, not raised: the records are
        simply read again (at-least-once; the worker's effects are idempotent)."""
        self._last_commit = self._clock()
        offsets = self.ledger.to_commit()
        if not offsets:
            return
        try:
            await self._started.commit(
                {TopicPartition(self.topic, int(p)): o for p, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError, KafkaError) as e:
            self.commits_failed_total += 1
            log.warning("commit of %s on %s failed (read again later): %r", offsets, self.topic, e)
        else:
            self.ledger.committed(offsets)

    @property
    def waiting(self) -> int:
        return int(self.ledger.waiting)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        owner = self.owner
        partitions = {tp.partition for tp in revoked}
        try:
            await owner._on_revoked(partitions)
            await owner.commit()
        except Exception as e:
            owner.failure = e
            raise
        finally:
            owner.ledger.reset()
            owner.assigned = set()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        owner = self.owner
        owner.assigned = {tp.partition for tp in assigned}
        try:
            await owner._on_assigned(set(owner.assigned))
        except Exception as e:
            # The new assignment must not be read without its state: the worker stops (and a
            # supervisor restarts it) rather than process records it cannot place.
            owner.failure = e
            raise
