"""The ``oracle`` policy: the true per-tick optimum (spec: "Policies and the report").

Each tick it reads the true :class:`~accelpilot.optimizer.timeline.Conditions` (phase
parameters, demand, faults, SLO threshold) and takes the exact optimum of that tick from
:func:`accelpilot.optimizer.solver.solve` (configurations enumerated up to symmetry, continuous
part solved to 1e-6 or better; large fleets: local-search relaxation, reported in ``methods``).

Waking is the one multi-tick decision: a parked device needs ``wake_s`` to work again. The
oracle knows the schedule, so it first computes, for every tick, which devices that tick's
optimum puts to work (``desired``), and keeps device ``d`` awake at tick ``t`` when it is
desired at any tick in ``[t, t + wake_ticks[d]]`` (it starts waking parked devices exactly in
time). Apart from that it optimizes each tick on its own, as the spec asks; devices that are
still parked or waking this tick are fixed in the solve (parked: standby power, waking: idle).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer import timeline as tl
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.simulator import Controls
from accelpilot.optimizer.solver import MAX_CONFIGS, Plan, TickModel, solve

Mask = NDArray[np.bool_]


def true_model(
    facts: FleetFacts,
    util: np.ndarray,
    beta: np.ndarray,
    demand: np.ndarray,
    slo: np.ndarray,
    ecc: Mask,
    throttle: Mask,
    off: Mask,
    parked: Mask | None = None,
    waking: Mask | None = None,
) -> TickModel:
    """A :class:`TickModel` from true conditions (and the current power states)."""
    n = facts.n_devices
    parked = np.zeros(n, dtype=bool) if parked is None else parked
    down = off if waking is None else (off | waking)
    return TickModel(
        util=util,
        beta=beta,
        demand_rate=demand,
        slo_rate=slo,
        rate_factor=np.where(ecc, tl.ECC_STORM_RATE_FACTOR, 1.0),
        fixed_cap_w=np.where(throttle, facts.min_cap_w, np.nan),
        down=down,
        parked=parked & ~down,
    )


class OraclePolicy:
    """Knows the truth; see the module docstring."""

    name = "oracle"
    privileged = True

    def __init__(
        self, scenario: Scenario, *, lookahead: bool = True, max_configs: int = MAX_CONFIGS
    ) -> None:
        self.facts = FleetFacts.from_scenario(scenario)
        self.timeline = tl.Timeline(scenario)
        self.max_configs = max_configs
        self.methods: set[str] = set()
        self._cache: dict[bytes, Plan] = {}
        n = self.facts.n_devices
        self._parked = np.zeros(n, dtype=bool)
        self._wake_left_s = np.zeros(n)
        self._need = self._need_awake(scenario.n_ticks) if lookahead else None

    def plan(self, model: TickModel) -> Plan:
        key = model.key()
        plan = self._cache.get(key)
        if plan is None:
            plan = solve(self.facts, model, max_configs=self.max_configs)
            self._cache[key] = plan
            self.methods.add(plan.method)
        return plan

    def decide(self, obs: Observation) -> Controls:
        c = obs.truth
        if c is None:
            raise ValueError("the oracle needs Observation.truth (run it as a privileged policy)")
        f = self.facts
        off = c.off_bus
        need = (
            self._need[obs.tick]
            if self._need is not None and obs.tick < len(self._need)
            else np.ones(f.n_devices, dtype=bool)
        )
        was_parked = self._parked & ~off
        wake_now = was_parked & need  # start waking what is needed soon
        stay_parked = was_parked & ~need
        wake_left = np.where(wake_now, f.wake_s, self._wake_left_s)
        wake_left = np.where(off, 0.0, wake_left)
        waking = wake_left > 0
        model = true_model(
            f,
            c.util,
            c.beta,
            c.demand_rate,
            c.slo_rate,
            c.ecc_storm,
            c.throttle,
            off,
            parked=stay_parked,
            waking=waking,
        )
        p = self.plan(model)
        park = (p.standby & ~need) | stay_parked
        park &= ~off
        # Mirror the simulator's power-state rules for the next tick.
        self._parked = park
        wl = np.where(park | off, 0.0, wake_left)
        self._wake_left_s = np.maximum(wl - f.tick_s, 0.0)
        return Controls(caps_w=p.caps_w, weights=p.weights, standby=park)

    def _need_awake(self, n_ticks: int) -> Mask:
        f = self.facts
        desired = np.zeros((n_ticks, f.n_devices), dtype=bool)
        for k0 in range(0, n_ticks, 1024):
            w = self.timeline.window(k0, min(1024, n_ticks - k0))
            last_key = None
            row = None
            for i in range(w.n):
                m = true_model(
                    f,
                    w.util[i],
                    w.beta[i],
                    w.demand_rate[i],
                    w.slo_rate[i],
                    w.ecc_storm[i],
                    w.throttle[i],
                    w.off_bus[i],
                )
                key = m.key()
                if key != last_key:
                    row = self.plan(m).assign >= 0
                    last_key = key
                desired[k0 + i] = row
        csum = np.concatenate([np.zeros((1, f.n_devices), dtype=np.int64), desired.cumsum(0)])
        t = np.arange(n_ticks)[:, None]
        end = np.minimum(t + f.wake_ticks[None, :] + 1, n_ticks)
        cols = np.arange(f.n_devices)[None, :]
        return (csum[end, cols] - csum[t, cols]) > 0
