"""The embedded runner's pipeline: the stream worker's stages, in process, over SQLite.

Same code as the faust worker (``ingest_sample``, ``dead_letter``, the
:class:`~accelpilot.streams.aggregates.WindowAggregator` of ``telemetry.aggregates``), so the demo
exercises what production runs; only the transport (a function call instead of Kafka) and the
store (SQLite instead of InfluxDB) differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from accelpilot.errors import SchemaError
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import SAMPLES
from accelpilot.streams.aggregates import WindowAggregator
from accelpilot.streams.dead_letters import dead_letter
from accelpilot.streams.ingest import ingest_sample
from accelpilot.streams.sqlite_store import SqliteStore


@dataclass
class PipelineCounts:
    samples: int = 0
    device_samples: int = 0
    dead_letters: int = 0
    aggregates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class EmbeddedPipeline:
    def __init__(
        self,
        store: SqliteStore,
        *,
        max_future_s: float = 300.0,
        windows_s: tuple[float, ...] = (10.0, 60.0),
        allowed_lateness_s: float = 2.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.clock_ns = clock_ns
        self.max_future_ns = int(max_future_s * 1e9)
        # The worker's aggregation stage: one aggregator per window length (device, host, fleet).
        self.aggregators = [WindowAggregator(w, allowed_lateness_s) for w in windows_s]
        self.counts = PipelineCounts()
        self._offset = 0

    def process(self, batch: list[tuple[bytes, bytes]]) -> list[HostSample]:
        """Validate and store one batch of (key, raw payload); returns the accepted samples."""
        now_ns = self.clock_ns()
        accepted: list[HostSample] = []
        for key, raw in batch:
            offset, self._offset = self._offset, self._offset + 1
            try:
                accepted.append(ingest_sample(raw, now_ns, self.max_future_ns))
            except SchemaError as e:
                self.store.write_dead_letter(
                    dead_letter(
                        raw=raw,
                        key=key,
                        topic=SAMPLES,
                        partition=0,
                        offset=offset,
                        error=e,
                        stage="ingest",
                        now_ns=now_ns,
                    )
                )
                self.counts.dead_letters += 1
                self.counts.reasons[e.reason] = self.counts.reasons.get(e.reason, 0) + 1
        self.counts.device_samples += self.store.write_samples(accepted)
        self.counts.samples += len(accepted)
        closed = [a for agg in self.aggregators for s in accepted for a in agg.add(s)]
        if closed:
            self.counts.aggregates += self.store.write_aggregates(closed)
        return accepted
