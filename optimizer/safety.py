"""The safety envelope every learned decision passes through before it reaches a device.

Rules, applied in this order to a raw :class:`Controls`:

1. **Limits**: caps are made finite (NaN → ``tdp_w``) and clamped into ``[min_cap_w, tdp_w]``;
   weights are made finite, non-negative and zero outside a stream's own devices.
2. **Anomaly revert**: a device whose XID or ECC counter jumped, or that stopped reporting,
   goes to ``tdp_w`` at once and stays there for ``anomaly_hold_ticks`` after the last sign.
3. **SLO guard**: a stream delivered less than ``demand / max_slowdown`` (from telemetry) → its
   devices go to ``tdp_w`` for ``backoff_ticks`` (backing off the savings).
4. **Bounded change**: a cap moves at most ``max_step_w`` per tick, except jumps *up to*
   ``tdp_w`` made by rules 2 and 3 (raising a cap is the safe direction).
5. **Budget**: if the caps sum above ``fleet_power_budget_w``, the budget is taken first from
   devices the envelope is not raising (their increases of this tick, then their headroom
   above ``min_cap_w``), then from the raised ones, then from every headroom by one factor,
   so the sum never exceeds the budget and a backing-off SLO guard is not cancelled by it.

Properties (tests/unit/test_policies_safety.py, hypothesis): for any raw output the caps are in
limits, move by at most ``max_step_w`` unless going to ``tdp_w``, and respect the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.simulator import Controls

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    max_step_frac: float = 0.25  # of (tdp_w - min_cap_w), per tick
    anomaly_hold_ticks: int = 30
    backoff_ticks: int = 5
    ecc_jump: float = 1.0  # corrected-ECC counts per tick that count as an anomaly
    slo_margin: float = 1e-6


class SafetyEnvelope:
    def __init__(self, facts: FleetFacts, config: SafetyConfig | None = None) -> None:
        self.facts = facts
        self.config = config or SafetyConfig()
        self.max_step_w = self.config.max_step_frac * (facts.tdp_w - facts.min_cap_w)
        n = facts.n_devices
        self.caps_w: Array = facts.tdp_w.copy()  # what the devices hold now (commanded)
        self.weights: Array = facts.even_weights.copy()
        self._anomaly_left = np.zeros(n, dtype=np.int64)
        self._backoff_left = np.zeros(facts.n_streams, dtype=np.int64)
        self._ecc = np.full(n, np.nan)
        self._xid = np.full(n, np.nan)
        self._demand_prev: Array | None = None
        self.interventions = 0
        self.short: Mask = np.zeros(facts.n_streams, dtype=bool)  # guard tripped this tick

    @property
    def anomalous(self) -> Mask:
        return self._anomaly_left > 0

    def observe(self, obs: Observation, capacity: Array | None = None) -> None:
        """Update anomaly and SLO-guard state from the newest telemetry. ``capacity`` (per
        stream, the policy's estimate of what its devices deliver uncapped) lowers the guard's
        threshold like the spec's SLO does when demand exceeds it."""
        f, cfg = self.facts, self.config
        tel = obs.telemetry
        self._anomaly_left = np.maximum(self._anomaly_left - 1, 0)
        self._backoff_left = np.maximum(self._backoff_left - 1, 0)
        if tel is None:
            self._demand_prev = obs.demand_rate
            return
        rep = tel.reporting
        ecc = np.where(rep, tel.ecc_corrected_total, self._ecc)
        xid = np.where(rep, tel.xid_total, self._xid)
        with np.errstate(invalid="ignore"):
            jump = ((ecc - self._ecc) >= cfg.ecc_jump) | ((xid - self._xid) > 0)
        jump = np.nan_to_num(jump, nan=0).astype(bool) | ~rep
        self._anomaly_left = np.where(jump, cfg.anomaly_hold_ticks, self._anomaly_left)
        self._ecc, self._xid = ecc, xid
        if self._demand_prev is not None:
            delivered = stream_delivered(f, tel.work_rate, self.weights, self._demand_prev)
            want = (
                self._demand_prev if capacity is None else np.minimum(self._demand_prev, capacity)
            )
            need = want / f.max_slowdown * (1.0 + cfg.slo_margin)
            short = delivered < need * (1 - 1e-9)
            self.short = short
            self._backoff_left = np.where(short, cfg.backoff_ticks, self._backoff_left)
        self._demand_prev = obs.demand_rate

    def apply(self, raw: Controls) -> Controls:
        f = self.facts
        tdp, lo = f.tdp_w, f.min_cap_w
        caps = np.asarray(tdp if raw.caps_w is None else raw.caps_w, dtype=float).copy()
        caps = np.where(np.isfinite(caps), caps, tdp)
        caps = np.clip(caps, lo, tdp)
        to_tdp = self.anomalous.copy()
        backoff = self._backoff_left > 0
        if backoff.any():
            to_tdp |= (f.membership[backoff] & (self.weights[backoff] > 0)).any(axis=0)
        caps = np.where(to_tdp, tdp, caps)
        prev = self.caps_w
        stepped = np.clip(caps, prev - self.max_step_w, prev + self.max_step_w)
        caps = np.where(to_tdp, tdp, stepped)
        caps = self._fit_budget(caps, prev, to_tdp)
        weights = self._weights(raw.weights)
        standby = (
            None if raw.standby is None else np.asarray(raw.standby, dtype=bool) & ~self.anomalous
        )
        if to_tdp.any():
            self.interventions += 1
        self.caps_w, self.weights = caps, weights
        return Controls(caps_w=caps, weights=weights, standby=standby)

    def _fit_budget(self, caps: Array, prev: Array, priority: Mask) -> Array:
        """Fit ``Σ caps`` under the budget, taking from the other devices before a device the
        envelope is raising (SLO guard, anomaly): first their increases, then their headroom,
        then the priority increases, then every headroom by one factor."""
        budget = self.facts.budget_w
        if budget is None or caps.sum() <= budget:
            return caps
        lo = self.facts.min_cap_w
        up = np.maximum(caps - prev, 0.0)
        for give in (up * ~priority, (caps - up - lo) * ~priority, up * priority):
            over = caps.sum() - budget
            if over <= 0:
                return caps
            if give.sum() > 0:
                caps = caps - give * min(1.0, over / give.sum())
        if caps.sum() <= budget:
            return caps
        head = caps - lo
        return lo + head * max(0.0, (budget - lo.sum()) / head.sum()) * (1 - 1e-12)

    def _weights(self, raw: object) -> Array:
        f = self.facts
        if raw is None:
            return f.even_weights.copy()
        w = np.nan_to_num(np.asarray(raw, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
        w = np.where(f.membership, np.maximum(w, 0.0), 0.0)
        return w


def stream_delivered(facts: FleetFacts, work_rate: Array, weights: Array, demand: Array) -> Array:
    """Per stream, the work its devices delivered, splitting a shared device's work in
    proportion to the demand assigned to it (NaN, off the bus, counts as nothing)."""
    sums = weights.sum(axis=1, keepdims=True)
    share = np.divide(weights, sums, out=np.zeros_like(weights), where=sums > 0)
    assigned = share * demand[:, None]
    tot = assigned.sum(axis=0)
    frac = np.divide(assigned, tot, out=np.zeros_like(assigned), where=tot > 0)
    return (frac * np.nan_to_num(work_rate, nan=0.0)[None, :]).sum(axis=1)
