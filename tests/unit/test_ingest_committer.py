"""The ingest loop's committer: InfluxDB writes overlap (``worker.influx_writes_in_flight``), yet
records are released strictly in batch order, whichever write returns first.

The committer's Kafka and InfluxDB edges are replaced by recorders here: what is under test is
its ordering, which the service tests (tests/service/test_two_workers.py and others) exercise
end to end against the real broker and database.
"""

from __future__ import annotations

import asyncio
from typing import Any

from accelpilot.config import load_settings
from accelpilot.streams.ingest_loop import IngestLoop, IngestTopics, _Effects

KIB_64 = 64 * 1024
TOPICS = IngestTopics("alerts", "anomalies", "aggregates", "rollup", "dlq", "host-state")


class GatedSink:
    """Each write waits until the test opens the gate named by its first line."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.returned: list[str] = []
        self.points_written = self.write_failures = self.points_rejected = 0

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def write(self, lines: list[str]) -> None:
        self.started.append(lines[0])
        await self.gate(lines[0]).wait()
        self.returned.append(lines[0])


class Released:
    def __init__(self) -> None:
        self.tokens: list[Any] = []

    def release(self, tokens: list[Any]) -> None:
        self.tokens += tokens

    async def maybe_commit(self) -> None:
        pass


def _loop(writes_in_flight: int) -> tuple[IngestLoop, GatedSink, Released]:
    settings = load_settings(
        worker={"write_max_bytes": KIB_64, "influx_writes_in_flight": writes_in_flight}
    )
    sink = GatedSink()
    loop = IngestLoop(settings, TOPICS, producer=None, sink=sink)  # type: ignore[arg-type]
    released = Released()
    loop.consumer = released  # type: ignore[assignment]
    return loop, sink, released


def _batch(name: str) -> _Effects:
    # One write each: two batches of 64 KiB never share a write of at most 64 KiB.
    return _Effects([], [name], KIB_64, [f"token-{name}"], {}, {}, {})


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _b_returns_before_a(
    writes_in_flight: int,
) -> tuple[IngestLoop, GatedSink, Released, asyncio.Future[None]]:
    """A running committer given batches a then b, b's write free to return at once and a's
    held until the test opens its gate."""
    loop, sink, released = _loop(writes_in_flight)
    committer = asyncio.ensure_future(loop._commit_effects())
    for name in ("a", "b"):
        await loop._queue(_batch(name))
    sink.gate("b").set()
    await _settle()
    return loop, sink, released, committer


def test_a_later_write_that_returns_first_waits_for_the_earlier_one() -> None:
    async def run() -> None:
        loop, sink, released, committer = await _b_returns_before_a(writes_in_flight=2)
        assert sink.started == ["a", "b"]  # both under way together
        assert sink.returned == ["b"]
        assert released.tokens == []  # b landed, but a has not: nothing released yet
        assert loop._in_flight_b == 2 * KIB_64
        sink.gate("a").set()
        await asyncio.wait_for(loop._effects.join(), 5)
        assert released.tokens == ["token-a", "token-b"]
        assert loop._in_flight_b == 0
        committer.cancel()

    asyncio.run(run())


def test_one_write_in_flight_starts_the_next_only_after_the_first_landed() -> None:
    async def run() -> None:
        loop, sink, released, committer = await _b_returns_before_a(writes_in_flight=1)
        assert sink.started == ["a"]
        sink.gate("a").set()
        await asyncio.wait_for(loop._effects.join(), 5)
        assert sink.started == ["a", "b"]
        assert released.tokens == ["token-a", "token-b"]
        committer.cancel()

    asyncio.run(run())
