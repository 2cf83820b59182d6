"""The sampler merges every backend's columns into one valid HostSample per tick."""

from __future__ import annotations

import math

from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.device import (
    Availability,
    Capabilities,
    DeviceBackend,
    DeviceInfo,
    Reading,
)
from accelpilot.collectors.discovery import discover
from accelpilot.collectors.sampler import Sampler
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas import codec
from accelpilot.schemas.samples import HostSample
from accelpilot.streams.ingest import ingest_sample


class TwoCpus(DeviceBackend):
    """A tiny backend with a metric the simulator does not have and a NaN reading."""

    name = "cpu"

    def _probe(self) -> Availability:
        return Availability(True, "")

    def discover(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(f"node0/cpu{i}", "cpu", "cpu", "amd", "EPYC", i, None, None, Capabilities())
            for i in range(2)
        ]

    def read(self) -> Reading:
        return Reading({"clock_sm_mhz": [2400.0, math.nan], "power_w": [150.0, None]})


def test_columns_merge_across_backends_in_discovery_order() -> None:
    sim = SimBackend(SimFleet(load_bundled_scenario("two-phase-8gpu")), "node0", advances=True)
    found = discover([sim, TwoCpus()])
    clock = iter(range(1_800_000_000 * 10**9, 1_900_000_000 * 10**9, 10**9))
    sampler = Sampler("node0", found.backends, found.devices, 1.0, clock_ns=lambda: next(clock))
    first, second = sampler.sample(), sampler.sample()
    assert second.seq == first.seq + 1
    assert first.device_ids[-2:] == ["node0/cpu0", "node0/cpu1"]
    assert first.device_kinds.count("gpu") == 8
    assert first.metrics["clock_sm_mhz"] == [None] * 8 + [2400.0, None]  # NaN -> absent
    assert first.metrics["power_w"][8:] == [150.0, None]
    assert first.metrics["work_rate"][8:] == [None, None]
    # What the agent publishes is what the stream worker accepts.
    decoded = ingest_sample(codec.encode(first), first.ts_ns, 10**9)
    assert isinstance(decoded, HostSample) and decoded == first
