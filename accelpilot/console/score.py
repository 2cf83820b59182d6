"""The efficiency score: energy saved against the ``max`` baseline, streaks and badges.

Baseline (honest by construction): :class:`ShadowBaseline` runs a second
:class:`~accelpilot.optimizer.simulator.FleetSimulator` of the *same scenario and seed* in
lockstep with the demo's fleet, under the spec's ``max`` policy (every cap at ``tdp_w``, even
weights, nobody parked). The simulator draws its noise and faults independently of the
decisions, so both fleets see the same demand, phases and faults tick for tick; the only
difference is what the optimizer and the operator did. Energies are the simulator's true
energies (``TickTruth.energy_j``), not the noisy reported power.

Scoring (:class:`EfficiencyScore`, pure):

- ``saved_j`` = baseline energy - actual energy, summed over every tick.
- A tick *counts* only if every stream met its SLO in the real fleet that tick; its saving is
  added to ``points`` (1 point per Wh saved within the SLO). A tick that violates the SLO scores
  nothing and breaks the streak, so starving a stream never pays.
- The *streak* is the number of consecutive counting ticks that saved at least
  ``MIN_SAVING_FRACTION`` of the baseline's energy.
- Badges are earned once, at the tick their condition first holds (:data:`BADGES`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from accelpilot.optimizer.accounting import TickTruth
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.policy import MaxPolicy
from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.simulator import FleetSimulator

MIN_SAVING_FRACTION = 0.01  # a tick saving less than 1% of the baseline does not extend a streak
ROLLING_TICKS = 60
J_PER_WH = 3600.0


@dataclass(frozen=True, slots=True)
class BadgeRule:
    id: str
    title: str
    description: str


BADGES: tuple[BadgeRule, ...] = (
    BadgeRule("first-wh", "First watt-hour", "1 Wh saved within the SLO"),
    BadgeRule("hundred-wh", "Hundred", "100 Wh saved within the SLO"),
    BadgeRule("kwh", "Kilowatt-hour club", "1 kWh saved within the SLO"),
    BadgeRule("streak-60", "Green minute", "60 s in a row saving energy within the SLO"),
    BadgeRule("streak-300", "Green five", "5 min in a row saving energy within the SLO"),
    BadgeRule("streak-900", "Green quarter", "15 min in a row saving energy within the SLO"),
    BadgeRule(
        "ten-percent", "Ten percent", "the last 60 s used 10% less energy than max, SLO held"
    ),
    BadgeRule(
        "twenty-percent",
        "Twenty percent",
        "the last 60 s used 20% less energy than max, SLO held",
    ),
)


@dataclass
class EfficiencyScore:
    """Running score of one fleet against its baseline (see the module docstring)."""

    tick_s: float
    ticks: int = 0
    energy_j: float = 0.0
    baseline_energy_j: float = 0.0
    work: float = 0.0
    baseline_work: float = 0.0
    saved_within_slo_j: float = 0.0
    slo_violation_ticks: int = 0
    streak_ticks: int = 0
    best_streak_ticks: int = 0
    earned: dict[str, int] = field(default_factory=dict)  # badge id -> tick earned
    _window: deque[tuple[float, float, bool]] = field(
        default_factory=lambda: deque(maxlen=ROLLING_TICKS)
    )

    def add(
        self,
        tick: int,
        energy_j: float,
        baseline_energy_j: float,
        *,
        work: float,
        baseline_work: float,
        slo_ok: bool,
    ) -> list[str]:
        """Account one tick; returns the ids of badges earned by it."""
        saved = baseline_energy_j - energy_j
        self.ticks += 1
        self.energy_j += energy_j
        self.baseline_energy_j += baseline_energy_j
        self.work += work
        self.baseline_work += baseline_work
        self._window.append((energy_j, baseline_energy_j, slo_ok))
        if slo_ok:
            self.saved_within_slo_j += saved
        else:
            self.slo_violation_ticks += 1
        if slo_ok and saved >= MIN_SAVING_FRACTION * baseline_energy_j and saved > 0:
            self.streak_ticks += 1
        else:
            self.streak_ticks = 0
        self.best_streak_ticks = max(self.best_streak_ticks, self.streak_ticks)
        new = [b for b in self._conditions_met() if b not in self.earned]
        for b in new:
            self.earned[b] = tick
        return new

    @property
    def saved_j(self) -> float:
        return self.baseline_energy_j - self.energy_j

    @property
    def points(self) -> int:
        return max(0, round(self.saved_within_slo_j / J_PER_WH))

    def rolling_saved_fraction(self) -> float | None:
        """Fraction of the baseline's energy saved over the last ``ROLLING_TICKS`` ticks
        (``None`` until the window is full or when one of its ticks violated the SLO)."""
        if len(self._window) < ROLLING_TICKS or not all(ok for _, _, ok in self._window):
            return None
        used = sum(e for e, _, _ in self._window)
        base = sum(b for _, b, _ in self._window)
        return (base - used) / base if base > 0 else None

    def _conditions_met(self) -> list[str]:
        wh = self.saved_within_slo_j / J_PER_WH
        streak_s = self.streak_ticks * self.tick_s
        rolling = self.rolling_saved_fraction()
        met = {
            "first-wh": wh >= 1,
            "hundred-wh": wh >= 100,
            "kwh": wh >= 1000,
            "streak-60": streak_s >= 60,
            "streak-300": streak_s >= 300,
            "streak-900": streak_s >= 900,
            "ten-percent": rolling is not None and rolling >= 0.10,
            "twenty-percent": rolling is not None and rolling >= 0.20,
        }
        return [b.id for b in BADGES if met[b.id]]

    def to_dict(self) -> dict[str, object]:
        def j_per_unit(e: float, w: float) -> float | None:
            return e / w if w > 0 else None

        rolling = self.rolling_saved_fraction()
        return {
            "ticks": self.ticks,
            "points": self.points,
            "energy_kwh": self.energy_j / 3.6e6,
            "baseline_energy_kwh": self.baseline_energy_j / 3.6e6,
            "saved_kwh": self.saved_j / 3.6e6,
            "saved_fraction": self.saved_j / self.baseline_energy_j
            if self.baseline_energy_j > 0
            else 0.0,
            "saved_within_slo_wh": self.saved_within_slo_j / J_PER_WH,
            "rolling_saved_fraction": rolling,
            "j_per_unit": j_per_unit(self.energy_j, self.work),
            "baseline_j_per_unit": j_per_unit(self.baseline_energy_j, self.baseline_work),
            "slo_violation_ticks": self.slo_violation_ticks,
            "streak_s": self.streak_ticks * self.tick_s,
            "best_streak_s": self.best_streak_ticks * self.tick_s,
            "badges": [
                {
                    "id": b.id,
                    "title": b.title,
                    "description": b.description,
                    "earned": b.id in self.earned,
                    "earned_tick": self.earned.get(b.id),
                }
                for b in BADGES
            ],
            "baseline": "same scenario and seed under the max policy (shadow simulator)",
        }


class ShadowBaseline:
    """The demo's scenario and seed under the ``max`` policy, one tick per real tick."""

    def __init__(self, scenario: Scenario, seed: int, start_ns: int) -> None:
        self.scenario = scenario
        self.start_ns = start_ns
        self.facts = FleetFacts.from_scenario(scenario)
        self.policy = MaxPolicy(self.facts)
        self.sim = FleetSimulator(scenario, seed=seed, start_ns=start_ns)

    def step(self, seed: int) -> TickTruth:
        """The next tick of the baseline; a new run starts when the real fleet's did (the demo's
        fleet wraps around at the scenario's end with a new seed)."""
        if self.sim.done or self.sim.seed != seed:
            self.sim = FleetSimulator(self.scenario, seed=seed, start_ns=self.start_ns)
        obs = Observation(self.sim.tick, self.facts, self.sim.conditions().demand_rate, None)
        c = self.policy.decide(obs)
        return self.sim.step(c.caps_w, c.weights, c.standby).truth


def slo_ok(truth: TickTruth) -> bool:
    return not bool(np.asarray(truth.slo_violated).any())
