"""Simulated devices from a fleet scenario (shared/spec/fleet-scenarios.md), through the same
interface as the real backends, so the demo, the stream pipeline and the optimizer all see the
same fleet.

One :class:`SimFleet` owns one :class:`~accelpilot.optimizer.simulator.FleetSimulator` and its
controls (caps, standby); each host's :class:`SimBackend` sees that host's devices (a device id
``node0/gpu1`` belongs to host ``node0``). A standalone agent's backend advances the fleet on
each read; in the embedded demo the runner advances it once per tick for all hosts.
"""

from __future__ import annotations

import numpy as np

from accelpilot.collectors.device import (
    Availability,
    Capabilities,
    DeviceBackend,
    DeviceInfo,
    PowerLimits,
    Reading,
    host_of,
)
from accelpilot.errors import ActuationError
from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.simulator import FleetSimulator, StepResult
from accelpilot.schemas.samples import DeviceEvent

XID_OFF_BUS = 79  # "GPU has fallen off the bus"


class SimFleet:
    """The simulated fleet and the controls the actuators set on it."""

    def __init__(self, scenario: Scenario, *, start_ns: int = 0, seed: int | None = None) -> None:
        self.scenario = scenario
        self.sim = FleetSimulator(scenario, seed=seed, start_ns=start_ns)
        self.caps_w = self.sim.tdp_w.copy()
        self.standby = np.zeros(len(scenario.devices), dtype=bool)
        self.weights = self.sim.even_weights.copy()
        self.last: StepResult | None = None
        self._xid_seen = np.zeros(len(scenario.devices))
        self.new_xids: list[int] = []  # device indices with a new XID in the last tick

    @property
    def hosts(self) -> list[str]:
        return sorted({host_of(d) for d in self.sim.device_ids})

    def advance(self) -> StepResult:
        """Simulate one tick under the current controls; wraps around at the scenario's end."""
        if self.sim.done:
            self.sim = FleetSimulator(
                self.scenario, seed=self.sim.seed + 1, start_ns=self.sim.start_ns
            )
            self._xid_seen[:] = 0
        self.last = self.sim.step(self.caps_w, self.weights, self.standby)
        xid = np.nan_to_num(self.last.telemetry.xid_total)
        self.new_xids = [int(i) for i in np.nonzero(xid > self._xid_seen)[0]]
        self._xid_seen = np.maximum(self._xid_seen, xid)
        return self.last


class SimBackend(DeviceBackend):
    name = "sim"

    def __init__(self, fleet: SimFleet, host_id: str, *, advances: bool = False) -> None:
        self.fleet = fleet
        self.host_id = host_id
        self.advances = advances
        self._idx = [i for i, d in enumerate(fleet.sim.device_ids) if host_of(d) == host_id]

    def _probe(self) -> Availability:
        if not self._idx:
            return Availability(
                False,
                f"scenario {self.fleet.scenario.name!r} has no devices "
                f"on host {self.host_id!r} (hosts: {self.fleet.hosts})",
            )
        return Availability(True, "")

    def discover(self) -> list[DeviceInfo]:
        out = []
        for local, i in enumerate(self._idx):
            d = self.fleet.scenario.devices[i]
            out.append(
                DeviceInfo(
                    device_id=d.id,
                    backend=self.name,
                    kind=d.kind,  # type: ignore[arg-type]
                    vendor=d.vendor,
                    model=d.model,
                    index=local,
                    uuid=f"SIM-{d.id}",
                    memory_total_bytes=None,
                    capabilities=Capabilities(
                        power_limits=PowerLimits(
                            min_w=d.min_cap_w, max_w=d.tdp_w, default_w=d.tdp_w
                        ),
                        extra={
                            "idle_w": d.idle_w,
                            "peak_rate": d.peak_rate,
                            "standby_w": d.standby_w,
                            "wake_s": d.wake_s,
                        },
                    ),
                )
            )
        return out

    def read(self) -> Reading:
        if self.advances or self.fleet.last is None:
            self.fleet.advance()
        assert self.fleet.last is not None
        tel = self.fleet.last.telemetry
        cols = tel.to_metrics()
        metrics = {name: [col[i] for i in self._idx] for name, col in cols.items()}
        events = [
            DeviceEvent(
                device_id=self.fleet.sim.device_ids[i],
                kind="xid",
                code=XID_OFF_BUS,
                ts_ns=int(tel.ts_ns),
            )
            for i in self.fleet.new_xids
            if i in self._idx
        ]
        return Reading(metrics=metrics, events=events)

    def power_cap_w(self, index: int) -> float | None:
        return float(self.fleet.caps_w[self._idx[index]])

    def set_power_cap_w(self, index: int, cap_w: float) -> None:
        i = self._idx[index]
        d = self.fleet.scenario.devices[i]
        if not d.min_cap_w <= cap_w <= d.tdp_w:
            raise ActuationError(f"{d.id}: {cap_w} W outside [{d.min_cap_w}, {d.tdp_w}] W")
        self.fleet.caps_w[i] = cap_w

    def set_standby(self, index: int, parked: bool) -> None:
        self.fleet.standby[self._idx[index]] = parked
