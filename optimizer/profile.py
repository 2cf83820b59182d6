"""The ``profile`` baseline: Zeus-style per-device power-limit profiling (spec: "Policies").

Each device runs an explicit, typed state machine (STYLE.md item 4):

``READY`` → ``PROFILING`` (sweep the caps of ``grid`` from ``tdp_w`` down, ``measure_ticks``
each, energy per work unit = Σ power / Σ work from telemetry; stop early at the first cap whose
delivered rate falls below the device's share of the SLO) → ``HOLDING`` (the best cap that kept
the SLO) → ``READY`` again when the phase visibly changes: the median of the last
``drift_window`` work rates or powers moves more than ``drift_tol`` from the values measured
when holding began, or the device misses its SLO share. Weights stay even; nothing is parked.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.simulator import Controls

Array = NDArray[np.float64]


class ProfilePhase(enum.Enum):
    READY = "ready"
    PROFILING = "profiling"
    HOLDING = "holding"


@dataclass(slots=True)
class DeviceProfile:
    phase: ProfilePhase = ProfilePhase.READY
    step: int = 0
    since_tick: int = 0
    power_sum: float = 0.0
    work_sum: float = 0.0
    samples: int = 0
    results: list[tuple[float, float]] = field(default_factory=list)  # (cap, J/unit)
    cap_w: float = 0.0
    ref_power: float = float("nan")
    ref_work: float = float("nan")
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=5))


class ProfilePolicy:
    name = "profile"
    privileged = False

    def __init__(
        self,
        facts: FleetFacts,
        *,
        grid_points: int = 8,
        measure_ticks: int = 3,
        drift_tol: float = 0.10,
        slo_margin: float = 0.01,
    ) -> None:
        self.facts = facts
        self.grid = np.linspace(facts.tdp_w, facts.min_cap_w, grid_points).T  # (devices, points)
        self.measure_ticks = measure_ticks
        self.drift_tol = drift_tol
        self.slo_margin = slo_margin
        self.devices = [DeviceProfile(cap_w=float(t)) for t in facts.tdp_w]
        self.sweeps = 0

    def decide(self, obs: Observation) -> Controls:
        f = self.facts
        tel = obs.telemetry
        share = (f.even_weights * obs.demand_rate[:, None]).sum(axis=0)
        for d, st in enumerate(self.devices):
            if tel is not None and tel.reporting[d]:
                self._advance(
                    d, st, obs.tick, float(tel.power_w[d]), float(tel.work_rate[d]), float(share[d])
                )
            elif st.phase is ProfilePhase.READY:
                self._start(d, st, obs.tick)
        caps = np.array([st.cap_w for st in self.devices])
        return Controls(caps_w=caps, weights=f.even_weights, standby=None)

    def _start(self, d: int, st: DeviceProfile, tick: int) -> None:
        st.phase = ProfilePhase.PROFILING
        st.step, st.results = 0, []
        self._set_cap(st, float(self.grid[d, 0]), tick)
        self.sweeps += 1

    def _set_cap(self, st: DeviceProfile, cap: float, tick: int) -> None:
        st.cap_w, st.since_tick = cap, tick
        st.power_sum = st.work_sum = 0.0
        st.samples = 0

    def _advance(
        self, d: int, st: DeviceProfile, tick: int, power: float, work: float, share: float
    ) -> None:
        need = share / self.facts.max_slowdown * (1 + self.slo_margin)
        if st.phase is ProfilePhase.READY:
            self._start(d, st, tick)
            return
        if st.phase is ProfilePhase.PROFILING:
            if tick - 1 < st.since_tick:  # telemetry from before this cap was set
                return
            st.power_sum += power
            st.work_sum += work
            st.samples += 1
            if st.samples < self.measure_ticks:
                return
            mean_work = st.work_sum / st.samples
            ok = mean_work >= need * (1 - 1e-9) or share <= 0
            if ok:
                jpu = st.power_sum / st.work_sum if st.work_sum > 0 else float("inf")
                st.results.append((st.cap_w, jpu))
            st.step += 1
            if ok and st.step < self.grid.shape[1]:
                self._set_cap(st, float(self.grid[d, st.step]), tick)
                return
            best = min(st.results, key=lambda r: r[1]) if st.results else (self.grid[d, 0], 0)
            st.phase = ProfilePhase.HOLDING
            self._set_cap(st, float(best[0]), tick)
            st.ref_power = st.ref_work = float("nan")
            st.recent.clear()
            return
        # HOLDING
        if tick - 1 < st.since_tick:
            return
        st.recent.append((power, work))
        if len(st.recent) < st.recent.maxlen:  # type: ignore[operator]
            return
        med_p, med_w = np.median(np.array(st.recent), axis=0)
        if np.isnan(st.ref_power):
            st.ref_power, st.ref_work = float(med_p), float(med_w)
            return
        drift = abs(med_w - st.ref_work) > self.drift_tol * max(st.ref_work, 1e-9) or abs(
            med_p - st.ref_power
        ) > self.drift_tol * max(st.ref_power, 1e-9)
        if drift or (work < need * (1 - 1e-9) and share > 0):
            st.phase = ProfilePhase.READY
            self._start(d, st, tick)
