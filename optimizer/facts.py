"""What a policy may know: the static facts of a fleet and one tick's observation.

Spec (shared/spec/fleet-scenarios.md, "Telemetry the optimizer may see"): a policy sees the
previous tick's telemetry and the facts an operator knows anyway — device limits, which devices
serve which stream, the demand currently requested, the SLO and the power budget. It never sees
``beta``/``util`` or the fault schedule; only the oracle additionally gets the true
:class:`~accelpilot.optimizer.timeline.Conditions` (``Observation.truth``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.telemetry import DeviceTelemetry
from accelpilot.optimizer.timeline import Conditions

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True, slots=True, eq=False)
class FleetFacts:
    """Static facts of a fleet, one value per device (scenario order) or stream."""

    device_ids: tuple[str, ...]
    stream_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    idle_w: Array
    tdp_w: Array
    min_cap_w: Array
    peak_rate: Array
    standby_w: Array
    wake_s: Array
    membership: Mask  # (streams, devices)
    max_slowdown: float
    budget_w: float | None
    tick_s: float

    @classmethod
    def from_scenario(cls, sc: Scenario) -> FleetFacts:
        ids = sc.device_ids
        member = np.zeros((len(sc.streams), len(ids)), dtype=bool)
        for s, st in enumerate(sc.streams):
            member[s, [ids.index(d) for d in st.devices]] = True
        devs = sc.devices
        return cls(
            device_ids=ids,
            stream_ids=sc.stream_ids,
            kinds=tuple(d.kind for d in devs),
            idle_w=np.array([d.idle_w for d in devs]),
            tdp_w=np.array([d.tdp_w for d in devs]),
            min_cap_w=np.array([d.min_cap_w for d in devs]),
            peak_rate=np.array([d.peak_rate for d in devs]),
            standby_w=np.array([d.standby_w for d in devs]),
            wake_s=np.array([d.wake_s for d in devs]),
            membership=member,
            max_slowdown=sc.objective.max_slowdown,
            budget_w=sc.objective.fleet_power_budget_w,
            tick_s=sc.tick_s,
        )

    def with_devices(self, cols: NDArray[np.int64], membership: Mask) -> FleetFacts:
        """These facts for devices ``cols`` (in that order, repeats allowed) with ``membership``
        (streams x ``len(cols)``); the streams and the fleet-wide facts are kept."""
        return replace(
            self,
            device_ids=tuple(self.device_ids[c] for c in cols),
            kinds=tuple(self.kinds[c] for c in cols),
            idle_w=self.idle_w[cols],
            tdp_w=self.tdp_w[cols],
            min_cap_w=self.min_cap_w[cols],
            peak_rate=self.peak_rate[cols],
            standby_w=self.standby_w[cols],
            wake_s=self.wake_s[cols],
            membership=membership,
        )

    @property
    def n_devices(self) -> int:
        return len(self.device_ids)

    @property
    def n_streams(self) -> int:
        return len(self.stream_ids)

    @property
    def even_weights(self) -> Array:
        return self.membership / self.membership.sum(axis=1, keepdims=True)

    @property
    def wake_ticks(self) -> NDArray[np.int64]:
        """Whole ticks a device needs from the wake command until it can work."""
        return np.ceil(self.wake_s / self.tick_s - 1e-9).astype(np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class Observation:
    """Input of :meth:`Policy.decide` for tick ``tick``.

    ``telemetry`` is the previous tick's (``None`` before the first tick); ``demand_rate`` is
    what each stream requests now; ``truth`` is set for privileged policies (the oracle) only.
    ``settled`` (live windows): devices whose cap held still over the whole telemetry window, so
    its averages describe one cap (``None``: all of them, as in the simulator's 1 s ticks).
    """

    tick: int
    facts: FleetFacts
    demand_rate: Array
    telemetry: DeviceTelemetry | None
    truth: Conditions | None = None
    settled: Mask | None = None
