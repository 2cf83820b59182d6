"""The project's ``learned`` policy: model-based, learned online from telemetry.

Every tick it (1) turns the previous tick's telemetry into full-load observations and updates
:class:`~accelpilot.optimizer.estimator.CurveEstimator` (per stream ``util``/``β``, per device
efficiency; phase changes are detected from rate residuals), with the offline-trained
:class:`~accelpilot.optimizer.prior.BetaPrior` as the prior for ``β``; (2) hands the estimated
model of this tick to the same solver as the oracle (:func:`accelpilot.optimizer.solver.solve`),
with a small SLO margin; (3) keeps enough devices awake to absorb a demand rise while a parked
device wakes (``headroom``); (4) passes the result through the
:class:`~accelpilot.optimizer.safety.SafetyEnvelope`. Before it has any data it runs every cap
at ``tdp_w`` with even weights (the ``max`` baseline), which is also where the first
observations come from. It never sees phase parameters, faults or the schedule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.estimator import CurveEstimator
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.prior import BetaPrior, prior_beta
from accelpilot.optimizer.safety import SafetyConfig, SafetyEnvelope
from accelpilot.optimizer.simulator import Controls
from accelpilot.optimizer.solver import Plan, TickModel, solve
from accelpilot.optimizer.telemetry import THROTTLE_HW_THERMAL_SLOWDOWN

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

_UNSET = object()
MARGIN_STEP = 0.01  # added to a stream's SLO margin each time its guard trips
MARGIN_MAX = 0.04  # most extra margin
MARGIN_DECAY = 0.99  # per tick, of the extra margin
MARGIN_QUANTUM = 0.0025
WAKE_GAIN = 0.03  # relative J/unit gain that makes waking a parked device worth it
QUIET_FAST_WAKE_S = 5.0  # s: a parked device this quick to wake covers a quiet stream's headroom
RECENT_DECAY = 0.998  # per tick: the remembered demand peak halves in ~350 ticks


class LearnedPolicy:
    name = "learned"
    privileged = False

    def __init__(
        self,
        facts: FleetFacts,
        *,
        prior: BetaPrior | object | None = _UNSET,
        safety: SafetyConfig | None = None,
        slo_margin: float = 0.01,
        headroom: float = 1.1,
        max_configs: int = 4096,
        weights_actuated: bool = True,
    ) -> None:
        self.facts = facts
        self.prior = BetaPrior.load() if prior is _UNSET else prior
        self.estimator = CurveEstimator(facts)
        self.safety = SafetyEnvelope(facts, safety)
        self.slo_margin = slo_margin
        # Per stream: the SLO margin grows when the guard trips (the model was too optimistic
        # there) and decays back over a few hundred quiet ticks.
        self._margin = np.full(facts.n_streams, slo_margin)
        self._recent_demand = np.zeros(facts.n_streams)
        self.headroom = headroom
        self.max_configs = max_configs
        # False where load weights do not reach the workload (the live sim agents publish them
        # for local schedulers only): then shares stay even, nothing is parked (a parked
        # device's even share would be lost) and only caps are chosen.
        self.weights_actuated = weights_actuated
        n = facts.n_devices
        self._parked = np.zeros(n, dtype=bool)
        self._wake_left_s = np.zeros(n)
        self._weights = facts.even_weights.copy()
        self._demand_prev: Array | None = None
        self._cache: dict[bytes, Plan] = {}
        self.methods: set[str] = set()
        self.solves = 0
        self._stream_kind = [
            Counter(
                k for k, m in zip(facts.kinds, facts.membership[s], strict=True) if m
            ).most_common(1)[0][0]
            for s in range(facts.n_streams)
        ]

    # -- the policy --------------------------------------------------------------------------

    def decide(self, obs: Observation) -> Controls:
        f = self.facts
        tel = obs.telemetry
        self.estimator.advance()
        if tel is not None:
            self._ingest(obs)
        self.safety.observe(obs, self._uncapped_estimate(tel))
        self._recent_demand = np.maximum(obs.demand_rate, self._recent_demand * RECENT_DECAY)
        excess = (self._margin - self.slo_margin) * MARGIN_DECAY
        self._margin = self.slo_margin + np.where(
            self.safety.short, np.minimum(MARGIN_MAX, excess + MARGIN_STEP), excess
        )
        if tel is None:
            raw = Controls(
                caps_w=f.tdp_w.copy(),
                weights=self._fallback_weights(obs),
                standby=self._parked.copy(),
            )
        else:
            raw = self._optimize(obs)
        out = self.safety.apply(raw)
        park = (
            np.zeros(f.n_devices, dtype=bool)
            if out.standby is None
            else np.asarray(out.standby, dtype=bool)
        )
        self._track_power_states(park, tel)
        self._weights = np.asarray(out.weights, dtype=float)
        self._demand_prev = obs.demand_rate
        return out

    def _fallback_weights(self, obs: Observation) -> Array:
        f = self.facts
        ok = ~self._parked & (self._wake_left_s <= 0)
        if obs.telemetry is not None:
            ok &= obs.telemetry.reporting
        w = f.membership & ok[None, :]
        w = np.where(w.any(axis=1, keepdims=True), w, f.membership).astype(float)
        return w / w.sum(axis=1, keepdims=True)

    def _ingest(self, obs: Observation) -> None:
        tel = obs.telemetry
        assert tel is not None
        if self._demand_prev is None:
            return
        assigned = self._weights * self._demand_prev[:, None]
        throttled = (
            np.nan_to_num(tel.throttle_reasons_mask, nan=0).astype(np.int64)
            & THROTTLE_HW_THERMAL_SLOWDOWN
        ) > 0
        # Anomalous devices (held at tdp_w by the envelope) still teach: an ECC storm shows as
        # a lower efficiency the solver must know about to route load elsewhere.
        usable = tel.reporting & ~throttled & ~self._parked
        usable &= self._wake_left_s <= 0
        if obs.settled is not None:
            usable &= obs.settled
        for d in np.flatnonzero(usable):
            streams = np.flatnonzero(assigned[:, d] > 0)
            if len(streams) != 1:
                continue
            self.estimator.add(
                int(streams[0]),
                int(d),
                float(tel.cap_w[d]),
                float(tel.power_w[d]),
                float(tel.work_rate[d]),
                float(tel.util_pct[d]) / 100.0,
            )
        priors = np.array(
            [
                prior_beta(self.prior, e.util, self._stream_kind[s])  # type: ignore[arg-type]
                for s, e in enumerate(self.estimator.est)
            ]
        )
        self.estimator.refit(priors)

    def _model(self, obs: Observation) -> TickModel:
        f, tel = self.facts, obs.telemetry
        assert tel is not None
        est = self.estimator
        util = np.array([round(e.util, 3) for e in est.est])
        beta = np.array([round(e.beta, 3) for e in est.est])
        eff = np.round(est.eff, 3)
        throttled = (
            np.nan_to_num(tel.throttle_reasons_mask, nan=0).astype(np.int64)
            & THROTTLE_HW_THERMAL_SLOWDOWN
        ) > 0
        # Devices of a stream not identified yet (start, phase change) run at tdp_w: that is
        # where its first readings come from, and it is the safe setting for a stream we cannot
        # model yet. A stream the solver time-shares keeps a device of its own (the solver
        # requires it), so every stream gets readings of its own.
        unknown = self._unknown_streams(obs)
        pinned = (self.safety.anomalous | f.membership[unknown].any(axis=0)) & tel.reporting
        fixed = np.where(throttled, f.min_cap_w, np.where(pinned, f.tdp_w, np.nan))
        off = ~tel.reporting
        waking = (self._wake_left_s > 0) & ~self._parked
        cap_full = self._capacity(util, beta, eff, np.where(throttled, f.min_cap_w, f.tdp_w))
        uncapped = (cap_full * ~off[None, :]).sum(axis=1)
        # Margin in steps of MARGIN_QUANTUM, so a decaying margin does not change the model (and
        # miss the plan cache) every tick.
        margin = self.slo_margin + np.floor((self._margin - self.slo_margin) / MARGIN_QUANTUM) * (
            MARGIN_QUANTUM
        )
        slo = np.minimum(obs.demand_rate, uncapped) / f.max_slowdown * (1 + margin)
        slo = np.minimum(slo, obs.demand_rate)  # a margin never asks for more than the demand
        return TickModel(
            util=util,
            beta=beta,
            demand_rate=obs.demand_rate.copy(),
            slo_rate=np.round(slo, 3),
            rate_factor=eff,
            fixed_cap_w=fixed,
            down=off | waking,
            parked=self._parked & ~off,
        )

    def _unknown_streams(self, obs: Observation) -> Mask:
        fitted = np.array([e.fitted for e in self.estimator.est], dtype=bool)
        return (obs.demand_rate > 0) & ~fitted

    def _uncapped_estimate(self, tel: object) -> Array | None:
        est = self.estimator
        if tel is None:
            return None
        util = np.array([e.util for e in est.est])
        beta = np.array([e.beta for e in est.est])
        full = self._capacity(util, beta, est.eff, self.facts.tdp_w)
        cap = (full * tel.reporting[None, :]).sum(axis=1)  # type: ignore[attr-defined]
        fitted = np.array([e.fitted for e in est.est], dtype=bool)
        return np.where(fitted, cap, np.inf)

    def _capacity(self, util: Array, beta: Array, eff: Array, cap_w: Array) -> Array:
        """(streams, devices) estimated full-load rate at ``cap_w`` of each member device."""
        f = self.facts
        dyn = f.tdp_w - f.idle_w
        x = np.minimum(1.0, (cap_w[None, :] - f.idle_w) / (util[:, None] * dyn))
        r = f.peak_rate * eff * util[:, None] * np.maximum(x, 0.0) ** beta[:, None]
        return r * f.membership

    def _optimize(self, obs: Observation) -> Controls:
        f = self.facts
        model = self._model(obs)
        # Wake parked devices when the awake capacity cannot absorb a demand rise.
        full = self._capacity(model.util, model.beta, model.rate_factor, f.tdp_w)
        # A stream that went quiet (a job between phases) tends to come back, and waking takes
        # wake_s: it keeps headroom for its recent demand (a slowly decaying peak) meanwhile.
        # Parked devices back within QUIET_FAST_WAKE_S count toward it: the return then costs
        # at most a few ticks, and nothing slow has to idle through the whole quiet period.
        quiet = obs.demand_rate <= 0
        need = self.headroom * np.where(quiet, self._recent_demand, obs.demand_rate)
        usable = ~model.down & ~model.parked
        wake = model.parked & f.membership[self._unknown_streams(obs)].any(axis=0)
        fast = f.wake_s <= QUIET_FAST_WAKE_S
        for s in np.flatnonzero(need > 0):
            ready = usable | (self._wake_left_s > 0) | (quiet[s] & model.parked & fast)
            have = float((full[s] * ready).sum())
            for d in np.argsort(-full[s]):
                if have >= need[s]:
                    break
                if model.parked[d] and f.membership[s, d] and not wake[d]:
                    wake[d] = True
                    have += full[s, d]
        if wake.any():
            model = replace(model, down=model.down | wake, parked=model.parked & ~wake)
        if not self.weights_actuated:
            return self._caps_for_even_shares(obs, model)
        plan = self._plan(model)
        park = plan.standby.copy()
        # Wake parked devices the tick's optimum would use if they were awake, when that is
        # clearly better (the oracle does this with its schedule; here it is a rule of thumb).
        if model.parked.any():
            alt = self._plan(replace(model, parked=np.zeros(f.n_devices, dtype=bool)))
            want = model.parked & (alt.assign >= 0)
            if want.any() and alt.j_per_unit < plan.j_per_unit * (1.0 - WAKE_GAIN):
                park &= ~want
        # Keep enough awake capacity (headroom) among devices the plan would park.
        for s in np.flatnonzero(need > 0):
            awake = ~park & ~model.down | (model.down & (self._wake_left_s > 0)) | wake
            have = float((full[s] * (awake | (quiet[s] & park & fast))).sum())
            for d in np.argsort(-full[s]):
                if have >= need[s]:
                    break
                if park[d] and f.membership[s, d] and not model.parked[d]:
                    park[d] = False
                    have += full[s, d]
        if (plan.standby & ~park & ~model.parked).any():
            # The headroom keeps awake devices the plan would park. Their idle power is paid
            # anyway, so re-plan with this awake set fixed: a kept device works where that
            # lowers J/unit and idles otherwise. (Keeping the first plan's weights let a kept
            # device serve the share the plan routes to a parked device to drop it, at that
            # device's own, often poor, J/unit: generated-302's CPU, 0.839.)
            down = model.down | (model.parked & ~park)
            plan = self._plan(replace(model, down=down, parked=park & ~down, awake=~park & ~down))
        return Controls(caps_w=plan.caps_w, weights=plan.weights, standby=park)

    def _caps_for_even_shares(self, obs: Observation, model: TickModel) -> Controls:
        """Caps only, shares even: each device serving one stream gets the cap that minimizes
        its joules per unit for a rate between its share of the stream's SLO rate and its share
        of the demand (the same per-device curve the solver uses); the rest stay at tdp_w."""
        f = self.facts
        w = f.even_weights
        caps = f.tdp_w.copy()
        dyn = f.tdp_w - f.idle_w
        fixed = ~np.isnan(model.fixed_cap_w)
        for d in range(f.n_devices):
            streams = np.flatnonzero(f.membership[:, d] & (obs.demand_rate > 0))
            if len(streams) != 1 or fixed[d] or model.down[d]:
                if fixed[d]:
                    caps[d] = model.fixed_cap_w[d]
                continue
            s = int(streams[0])
            u, b = float(model.util[s]), float(model.beta[s])
            pk = float(f.peak_rate[d] * model.rate_factor[d])
            x_lo = min(1.0, (f.min_cap_w[d] - f.idle_w[d]) / (u * dyn[d]))
            r_max = pk * u
            lo = min(model.slo_rate[s] * w[s, d], r_max)
            hi = min(max(obs.demand_rate[s] * w[s, d], lo), r_max)
            r = np.linspace(lo, hi, 65) if hi > lo else np.array([lo])
            x = np.maximum(x_lo, (r / r_max) ** (1.0 / b))
            power = f.idle_w[d] + r * (dyn[d] / pk) * x ** (1.0 - b)
            best = int(np.argmin(power / np.maximum(r, 1e-12)))
            caps[d] = f.idle_w[d] + u * dyn[d] * x[best] + 1e-9 * f.tdp_w[d]
        return Controls(
            caps_w=np.clip(caps, f.min_cap_w, f.tdp_w),
            weights=w.copy(),
            standby=np.zeros(f.n_devices, dtype=bool),
        )

    def _plan(self, model: TickModel) -> Plan:
        key = model.key()
        plan = self._cache.get(key)
        if plan is None:
            plan = solve(self.facts, model, max_configs=self.max_configs, sole_shares_last=True)
            self.solves += 1
            self.methods.add(plan.method)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = plan
        return plan

    def _track_power_states(self, park: Mask, tel: object) -> None:
        f = self.facts
        off = np.zeros(f.n_devices, dtype=bool)
        if tel is not None:
            off = ~tel.reporting  # type: ignore[attr-defined]
        wl = np.where(self._parked & ~park, f.wake_s, self._wake_left_s)
        parked = park & ~off
        wl = np.where(parked | off, 0.0, wl)
        self._parked = parked
        self._wake_left_s = np.maximum(wl - f.tick_s, 0.0)
