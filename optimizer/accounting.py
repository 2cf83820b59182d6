"""The true per-tick accounting of a simulated fleet, kept apart from what the optimizer observes.

The report (spec: "Policies and the report") is computed from these: energy (J), work done,
joules per work unit and the SLO-violation fraction of stream-ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class TickTruth:
    """Ground truth of one tick: per device ``power_w``/``energy_j``/``cap_w`` (enforced, after the
    budget and a thermal throttle), per stream ``work`` (units in this tick), ``served_rate``,
    ``slo_rate`` (the threshold) and ``slo_violated``; ``served_rate_by_device`` is
    ``(streams, devices)``; ``budget_clipped`` says the commanded caps were lowered to the budget.
    """

    tick: int
    power_w: Array
    energy_j: Array
    cap_w: Array
    parked: Mask
    waking: Mask
    served_rate_by_device: Array
    work: Array
    served_rate: Array
    slo_rate: Array
    slo_violated: Mask
    budget_clipped: bool


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the ticks run so far. ``energy_j`` per device, ``work`` and ``violation_ticks``
    per stream; ``ticks`` is the number of ticks."""

    ticks: int
    energy_j: Array
    work: Array
    violation_ticks: Array

    @property
    def total_energy_j(self) -> float:
        return float(self.energy_j.sum())

    @property
    def total_work(self) -> float:
        return float(self.work.sum())

    @property
    def joules_per_unit(self) -> float:
        """Fleet joules per work unit (``inf`` when no work was done)."""
        work = self.total_work
        return self.total_energy_j / work if work > 0 else float("inf")

    @property
    def slo_violation_fraction(self) -> float:
        """Violating stream-ticks over all stream-ticks."""
        n = self.ticks * self.violation_ticks.size
        return float(self.violation_ticks.sum()) / n if n else 0.0


class Ledger:
    """Accumulates :class:`TickTruth` into :class:`Totals` (in place, for speed)."""

    def __init__(self, n_devices: int, n_streams: int) -> None:
        self._ticks = 0
        self._energy_j = np.zeros(n_devices)
        self._work = np.zeros(n_streams)
        self._violations = np.zeros(n_streams)

    def add(self, truth: TickTruth) -> None:
        self._ticks += 1
        self._energy_j += truth.energy_j
        self._work += truth.work
        self._violations += truth.slo_violated

    def totals(self) -> Totals:
        return Totals(
            ticks=self._ticks,
            energy_j=self._energy_j.copy(),
            work=self._work.copy(),
            violation_ticks=self._violations.copy(),
        )
