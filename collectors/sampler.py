"""Turn one tick of every backend's reading into one ``telemetry.samples`` payload.

Columns are merged across backends in discovery order; a metric one backend does not report is
``None`` for its devices. ``seq`` starts at the wall-clock millisecond of the agent's start and
grows by one per tick, so it keeps increasing across restarts (ticks are ≥ 50 ms apart).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from accelpilot.collectors.device import DeviceBackend, DeviceInfo
from accelpilot.schemas.samples import AgentHealth, DeviceEvent, HostSample


class Sampler:
    def __init__(
        self,
        host_id: str,
        backends: Sequence[DeviceBackend],
        devices: Sequence[DeviceInfo],
        interval_s: float,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.host_id = host_id
        self.backends = list(backends)
        self.interval_s = interval_s
        self.clock_ns = clock_ns
        by_backend: dict[str, list[DeviceInfo]] = {}
        for d in devices:
            by_backend.setdefault(d.backend, []).append(d)
        self._counts = [len(by_backend.get(b.name, [])) for b in self.backends]
        ordered = [d for b in self.backends for d in by_backend.get(b.name, [])]
        self.device_ids = [d.device_id for d in ordered]
        self.device_kinds = [d.kind for d in ordered]
        self.seq = clock_ns() // 1_000_000

    def sample(self, health: AgentHealth | None = None) -> HostSample:
        ts_ns = self.clock_ns()
        n = len(self.device_ids)
        metrics: dict[str, list[float | None]] = {}
        events: list[DeviceEvent] = []
        offset = 0
        for backend, count in zip(self.backends, self._counts, strict=True):
            reading = backend.read()
            for name, column in reading.metrics.items():
                merged = metrics.get(name)
                if merged is None:
                    merged = metrics[name] = [None] * n
                # NaN/inf would travel as JSON null anyway: make "not reported" explicit.
                merged[offset : offset + count] = [
                    v if v is None or math.isfinite(v) else None for v in column
                ]
            events.extend(reading.events)
            offset += count
        sample = HostSample(
            host_id=self.host_id,
            ts_ns=ts_ns,
            seq=self.seq,
            interval_s=self.interval_s,
            device_ids=self.device_ids,
            device_kinds=self.device_kinds,  # type: ignore[arg-type]
            metrics={k: v for k, v in metrics.items() if any(x is not None for x in v)},
            events=events,
            agent=health,
        )
        self.seq += 1
        return sample
