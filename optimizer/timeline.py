"""What is true at each tick of a scenario: the active phase of every stream and the faults.

Timing rule: tick ``k`` covers ``[k · tick_s, (k + 1) · tick_s)``. A phase or a fault takes effect
on every tick whose *start* lies at or after its ``at_s`` (a fault: before ``at_s + duration_s``);
the resolution is one tick. A phase's ``demand_rate`` holds from its ``at_s`` until a later phase
sets another one; before any phase sets it, the stream's own ``demand_rate`` applies.

The timeline is computed for a window of ticks at once (vectorized), so the simulator pays for it
once per few thousand ticks, and long scenarios never hold their whole schedule in memory.
The SLO threshold lives here too, because it depends only on the scenario, not on any policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer import physics
from accelpilot.optimizer.scenario import Scenario, Stream

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

# Spec: "ecc_storm (throughput -20%, ...)".
ECC_STORM_RATE_FACTOR = 0.8
# A tick's start counts as "at or after at_s" within this fraction of a tick (float rounding).
_TIME_EPS_TICKS = 1e-9


@dataclass(frozen=True, slots=True)
class TimelineWindow:
    """Ticks ``k0 .. k0 + n - 1``: arrays ``(n, streams)`` and ``(n, devices)``.

    ``uncapped_rate[t, s]`` is what stream ``s``'s devices could deliver with every cap at
    ``tdp_w``, each device serving this stream alone, under the faults of that tick (off the bus:
    nothing; ECC storm: -20%; thermal throttle: at ``min_cap_w``). ``slo_rate[t, s]`` is the
    spec's threshold ``min(demand_rate, uncapped) / max_slowdown``.
    """

    k0: int
    util: Array
    beta: Array
    demand_rate: Array
    throttle: Mask
    off_bus: Mask
    ecc_storm: Mask
    power_spike: Mask
    uncapped_rate: Array
    slo_rate: Array

    @property
    def n(self) -> int:
        return int(self.util.shape[0])

    def conditions(self, i: int) -> Conditions:
        """The truth of the window's ``i``-th tick (tick ``k0 + i``)."""
        return Conditions(
            tick=self.k0 + i,
            util=self.util[i],
            beta=self.beta[i],
            demand_rate=self.demand_rate[i],
            throttle=self.throttle[i],
            off_bus=self.off_bus[i],
            ecc_storm=self.ecc_storm[i],
            power_spike=self.power_spike[i],
            uncapped_rate=self.uncapped_rate[i],
            slo_rate=self.slo_rate[i],
        )


@dataclass(frozen=True, slots=True)
class Conditions:
    """The truth of one tick (the oracle's privileged view; a policy never sees this)."""

    tick: int
    util: Array
    beta: Array
    demand_rate: Array
    throttle: Mask
    off_bus: Mask
    ecc_storm: Mask
    power_spike: Mask
    uncapped_rate: Array
    slo_rate: Array


class Timeline:
    """Phase and fault schedule of one scenario, evaluated over windows of ticks."""

    def __init__(self, scenario: Scenario) -> None:
        self._scenario = scenario
        ids = scenario.device_ids
        n_dev = len(ids)
        self.membership: Mask = np.zeros((len(scenario.streams), n_dev), dtype=bool)
        for s, stream in enumerate(scenario.streams):
            self.membership[s, [ids.index(d) for d in stream.devices]] = True
        self._phase_at = [np.array([p.at_s for p in st.phases]) for st in scenario.streams]
        self._phase_util = [np.array([p.util for p in st.phases]) for st in scenario.streams]
        self._phase_beta = [np.array([p.beta for p in st.phases]) for st in scenario.streams]
        self._phase_demand = [_forward_demand(st) for st in scenario.streams]
        self._fault_rows = [
            (f.type, ids.index(f.device), f.at_s, f.at_s + f.duration_s) for f in scenario.faults
        ]
        devs = scenario.devices
        self._idle_w = np.array([d.idle_w for d in devs])
        self._tdp_w = np.array([d.tdp_w for d in devs])
        self._min_cap_w = np.array([d.min_cap_w for d in devs])
        self._peak_rate = np.array([d.peak_rate for d in devs])

    def window(self, k0: int, n: int) -> TimelineWindow:
        """The schedule of ticks ``k0 .. k0 + n - 1``."""
        sc = self._scenario
        t_s = (np.arange(k0, k0 + n, dtype=float) + _TIME_EPS_TICKS) * sc.tick_s
        n_str, n_dev = self.membership.shape
        util = np.empty((n, n_str))
        beta = np.empty((n, n_str))
        demand = np.empty((n, n_str))
        for s in range(n_str):
            idx = np.searchsorted(self._phase_at[s], t_s, side="right") - 1
            util[:, s] = self._phase_util[s][idx]
            beta[:, s] = self._phase_beta[s][idx]
            demand[:, s] = self._phase_demand[s][idx]
        masks = {name: np.zeros((n, n_dev), dtype=bool) for name in _FAULT_FIELDS}
        for ftype, d, start_s, end_s in self._fault_rows:
            masks[ftype][:, d] |= (t_s >= start_s) & (t_s < end_s)
        uncapped = self._uncapped_rate(util, beta, masks)
        return TimelineWindow(
            k0=k0,
            util=util,
            beta=beta,
            demand_rate=demand,
            throttle=masks["thermal_throttle"],
            off_bus=masks["off_bus"],
            ecc_storm=masks["ecc_storm"],
            power_spike=masks["power_spike"],
            uncapped_rate=uncapped,
            slo_rate=physics.slo_threshold_rate(demand, uncapped, sc.objective.max_slowdown),
        )

    def conditions(self, tick: int) -> Conditions:
        """The truth of a single tick (convenient, not fast: use :meth:`window` in loops)."""
        return self.window(tick, 1).conditions(0)

    def _uncapped_rate(self, util: Array, beta: Array, masks: dict[str, Mask]) -> Array:
        # (n, S, D): each stream's phase on each device, caps at tdp_w (min_cap_w if throttled).
        cap = np.where(masks["thermal_throttle"], self._min_cap_w, self._tdp_w)[:, None, :]
        _, rate = physics.capped_rate(
            self._peak_rate, self._idle_w, self._tdp_w, util[:, :, None], beta[:, :, None], cap
        )
        factor = np.where(masks["ecc_storm"], ECC_STORM_RATE_FACTOR, 1.0)
        factor = np.where(masks["off_bus"], 0.0, factor)[:, None, :]
        return (rate * factor * self.membership[None, :, :]).sum(axis=2)


_FAULT_FIELDS = ("thermal_throttle", "off_bus", "ecc_storm", "power_spike")


def _forward_demand(stream: Stream) -> Array:
    """Per phase, the demand rate in force: the latest phase that set one, else the stream's."""
    out = []
    current = stream.demand_rate
    for p in stream.phases:
        if p.demand_rate is not None:
            current = p.demand_rate
        assert current is not None  # guaranteed by the loader
        out.append(current)
    return np.array(out)
