"""BatchConsumer.batches around a rebalance that ends while it lingers for more records.

The consumer under test is the real BatchConsumer; only aiokafka's ``getmany`` is replaced by a
scripted partition reader (what the broker would hand over), so the rebalance can be made to
end at a chosen moment. The real-broker behaviour is covered by tests/service/test_two_workers.py.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Any

from accelpilot.streams.batch_consumer import BatchConsumer

TP = namedtuple("TP", "topic partition")
Record = namedtuple("Record", "offset value")


class ScriptedPartition:
    """getmany over one partition: hands over the records from ``position``; a rebalance resets
    the position to the committed offset, as aiokafka does for a new assignment."""

    def __init__(self, n: int) -> None:
        self.log = [Record(i, b"") for i in range(n)]
        self.position = 0
        self.committed = 0
        self.per_call = 3

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        await asyncio.sleep(0)
        got = self.log[self.position : self.position + min(self.per_call, max_records)]
        self.position += len(got)
        return {TP("t", 0): got} if got else {}


def _consumer(partition: ScriptedPartition) -> BatchConsumer:
    c = BatchConsumer(
        bootstrap_servers="127.0.0.1:1", topic="t", group_id="g", batch_max=100,
        within_s=0.01, linger_s=0.05,
    )  # fmt: skip
    c._consumer = partition  # type: ignore[assignment]
    return c


def test_records_fetched_before_a_rebalance_are_not_handed_over_as_new() -> None:
    async def run() -> tuple[list[Any], list[int]]:
        part = ScriptedPartition(20)
        consumer = _consumer(part)
        part.position = part.committed = 5

        async def rebalance() -> None:
            await asyncio.sleep(0.02)  # while batches() lingers after its first getmany
            consumer.ledger.reset()
            part.position = part.committed  # the new assignment reads from the committed offset

        batches = consumer.batches()
        task = asyncio.ensure_future(rebalance())
        first = await batches.__anext__()
        await task
        second = await batches.__anext__()
        return first, [r.offset for _, r in second]

    first, second = asyncio.run(run())
    # The records fetched before the rebalance (5, 6, 7) are not in the batch: the re-read
    # ones (5, 6, 7 again) are, in the new generation, in offset order.
    assert [r.offset for _, r in first] == [5, 6, 7]
    assert {token[0] for token, _ in first} == {1}
    assert second == [8, 9, 10, 11, 12, 13]


def test_the_ledger_never_commits_past_a_re_read_record() -> None:
    async def run() -> dict[Any, int]:
        part = ScriptedPartition(20)
        consumer = _consumer(part)

        async def rebalance() -> None:
            await asyncio.sleep(0.02)
            consumer.ledger.reset()
            part.position = part.committed

        batches = consumer.batches()
        await batches.__anext__()  # 0..5, then a rebalance; nothing committed (committed 0)
        task = asyncio.ensure_future(rebalance())
        batch = await batches.__anext__()
        await task
        # Offsets 3.. are done, the re-read 0..2 are not: nothing may be committed yet.
        consumer.release([token for token, r in batch if r.offset >= 3])
        return consumer.ledger.to_commit()

    assert asyncio.run(run()) == {}
