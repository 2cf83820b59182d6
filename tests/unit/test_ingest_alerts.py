"""The ingest loop's alerts: a batch's alerts all go to the alerts' own producer before any of
their deliveries is awaited (one round trip per batch, not one per alert), and none of them
waits behind the main producer.

The producers are recorders here (what is under test is the loop's order of sends and awaits);
tests/service/test_alert_producer.py runs the alerts' producer against the real broker and
tests/service/test_worker_alerts.py the whole worker.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import load_settings
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.streams.bench_pipeline import _with_fault
from accelpilot.streams.ingest_loop import IngestLoop, IngestTopics

TOPICS = IngestTopics("alerts", "anomalies", "aggregates", "rollup", "dlq", "host-state")
HOSTS = 6


class Recorder:
    """A producer whose deliveries complete only when the test says so (``gated``) or at once."""

    def __init__(self, gated: bool) -> None:
        self.gated = gated
        self.sent: list[tuple[str, bytes]] = []
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.gated:
            fut.set_result(None)
        self.deliveries.append(fut)
        return fut


def _batch(samples: list[Any], first_offset: int) -> list[tuple[Any, Any]]:
    return [
        ((0, 0, first_offset + i), SimpleNamespace(key=s.host_id.encode(), value=codec.encode(s)))
        for i, s in enumerate(samples)
    ]


async def _two_faulty_ticks() -> tuple[Recorder, Recorder, asyncio.Task[Any]]:
    main, alerts = Recorder(gated=False), Recorder(gated=True)
    loop = IngestLoop(load_settings(), TOPICS, main, sink=None, alert_producer=alerts)  # type: ignore[arg-type]
    start_ns = (time.time_ns() - 60 * 10**9) // 10**9 * 10**9
    ticks = [
        [
            _with_fault(s, device=3, on=True)
            for s in synthetic_samples(f"h{h}", n_devices=8, n_ticks=2, start_ns=start_ns, seed=h)
        ]
        for h in range(HOSTS)
    ]
    # Tick 0 then tick 1 of every host: the thermal rule fires on the second faulty sample.
    await loop._process(_batch([ticks[h][0] for h in range(HOSTS)], 0))
    assert alerts.sent == []
    task = asyncio.ensure_future(loop._process(_batch([ticks[h][1] for h in range(HOSTS)], HOSTS)))
    for _ in range(20):
        await asyncio.sleep(0)
    return main, alerts, task


def test_a_batchs_alerts_are_all_handed_over_before_any_delivery_is_awaited() -> None:
    async def scenario() -> None:
        main, alerts, task = await _two_faulty_ticks()
        # Every host's alert was handed over while none of them is delivered yet.
        assert not task.done()
        fired = [codec.decode(Alert, v) for _, v in alerts.sent]
        assert [(a.kind, a.state) for a in fired] == [("thermal", "firing")] * HOSTS
        assert sorted(a.host_id for a in fired) == [f"h{h}" for h in range(HOSTS)]
        assert {topic for topic, _ in alerts.sent} == {"alerts"}
        # Nothing else was produced before the alerts are delivered: they go first.
        assert main.sent == []
        for fut in alerts.deliveries:
            fut.set_result(None)
        await asyncio.wait_for(task, 10)
        # The rest of the batch (if any) goes through the main producer, no alert among it.
        assert "alerts" not in {topic for topic, _ in main.sent}
        assert len(alerts.sent) == HOSTS

    asyncio.run(scenario())


def test_a_failed_alert_delivery_fails_the_batch() -> None:
    """An alert the broker refused is not dropped: the batch fails (the worker stops, and its
    records, never committed, are read again)."""

    async def scenario() -> None:
        _, alerts, task = await _two_faulty_ticks()
        alerts.deliveries[2].set_exception(RuntimeError("broker said no"))
        for fut in alerts.deliveries:
            if not fut.done():
                fut.set_result(None)
        try:
            await asyncio.wait_for(task, 10)
        except RuntimeError as e:
            assert "broker said no" in str(e)
        else:
            raise AssertionError("the batch succeeded although an alert was not delivered")

    asyncio.run(scenario())
