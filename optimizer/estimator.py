"""Online identification of each stream's power→rate curve from telemetry alone.

From one tick of a device's telemetry the busy fraction ``util_pct/100`` turns the readings into
full-load quantities: ``R_obs = work_rate / busy`` (the rate ``R(c)`` at the enforced cap) and
``P_obs = idle + (power - idle) / busy`` (the power ``min(P_dem, c)``; noisy). The spec's model
then says, with ``x = min(1, (c - idle) / (u·D))``:

    P_obs ≈ idle + x·u·D          R_obs = pk_d · eff_d · u · x^β

Per stream (a phase is a property of the workload, so all its devices share ``u`` and ``β``)
and per device (``eff_d``: 1 normally, lower in an ECC storm) the estimator keeps the last
observations and fits, for each ``u`` on a grid, ``β`` and the per-device intercepts by a
within-device least-squares regression of ``log R_obs`` on ``log x`` (closed form, with a prior
pseudo-observation pulling ``β`` to the learned prior when the caps have not varied), and keeps
the ``u`` with the least combined (robust) power and rate residual. A sustained rate residual on
most of a stream's devices is a phase change (the stream's history is dropped); on one device
it is a device change (that device's history is dropped).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.facts import FleetFacts

Array = NDArray[np.float64]

U_GRID = np.linspace(0.05, 1.0, 96)
HISTORY = 24
MIN_BUSY = 0.05
PRIOR_WEIGHT = 0.02  # in units of (log x)^2: the prior counts like a 0.14 spread of log x
RATE_SIGMA = 0.01
POWER_SIGMA = 0.02
CHANGE_TOL = 0.02  # relative rate residual that counts as a change
CHANGE_TICKS = 2
EFF_RIDGE = 0.05  # pseudo-observations of log-efficiency 0 per device
MIN_OBS_CAPPED = 6
MAX_AGE_TICKS = 3600  # a stream with no reading for this long is forgotten (re-identified)
RECENT_TICKS = 3  # devices observed this recently take part in the phase-change vote


@dataclass(slots=True)
class StreamEstimate:
    util: float
    beta: float
    fitted: bool  # False: only the prior so far
    n_obs: int


class CurveEstimator:
    def __init__(self, facts: FleetFacts, prior: object | None = None) -> None:
        self.facts = facts
        self.prior = prior
        n_s, n_d = facts.membership.shape
        self._hist: list[list[deque[tuple[float, float, float, float, int]]]] = [
            [deque(maxlen=HISTORY) for _ in range(n_d)] for _ in range(n_s)
        ]
        self.est = [StreamEstimate(0.8, 0.25, False, 0) for _ in range(n_s)]
        # Efficiency per (stream, device): a device shared by two streams must not carry one
        # stream's fitting error into the other's predictions. ``eff`` (per device, what the
        # solver uses) is the lowest of its streams' current values: the cautious side.
        self.eff_sd = np.ones((n_s, n_d))
        self.eff = np.ones(n_d)
        self._anchor: list[list[deque[tuple[float, float, float, float, int]]]] = [
            [deque(maxlen=6) for _ in range(n_d)] for _ in range(n_s)
        ]
        self._strikes = np.zeros((n_s, n_d), dtype=np.int64)
        self._last_tick = np.full((n_s, n_d), -(10**9), dtype=np.int64)
        self.changes = 0
        self.tick = 0
        self._dirty = np.ones(n_s, dtype=bool)

    def advance(self) -> None:
        """One tick passed: observations age (those older than ``MAX_AGE_TICKS`` are dropped)."""
        self.tick += 1
        for s, e in enumerate(self.est):
            stale = self._last_tick[s] < self.tick - MAX_AGE_TICKS
            if e.n_obs and stale[self.facts.membership[s]].all():
                self._forget_stream(s)

    def add(
        self, stream: int, device: int, cap_w: float, power_w: float, work: float, busy: float
    ) -> None:
        f = self.facts
        if busy < MIN_BUSY or work <= 0 or not np.isfinite(power_w):
            return
        idle = f.idle_w[device]
        r_obs = work / busy
        p_obs = idle + (power_w - idle) / busy
        pred = self.predict_rate(stream, device, cap_w)
        hist = self._hist[stream]
        if self.est[stream].fitted and pred > 0:
            if abs(r_obs / pred - 1.0) > CHANGE_TOL:
                self._strikes[stream, device] += 1
            else:
                self._strikes[stream, device] = 0
            if self._strikes[stream, device] >= CHANGE_TICKS:
                self._on_change(stream, device)
        row = (cap_w, p_obs, r_obs, busy, self.tick)
        hist[device].append(row)
        self._last_tick[stream, device] = self.tick
        # A cap at tdp_w never binds (P_dem ≤ tdp_w), and a power reading clearly below the
        # cap means uncapped too: such an observation pins u.
        at_tdp = cap_w >= f.tdp_w[device] * (1 - 1e-6)
        if at_tdp or p_obs < cap_w - 3 * POWER_SIGMA * p_obs / busy - 1.0:
            self._anchor[stream][device].append(row)
        self._dirty[stream] = True

    def _on_change(self, stream: int, device: int) -> None:
        f = self.facts
        devs = np.flatnonzero(f.membership[stream])
        recent = self._last_tick[stream] >= self.tick - RECENT_TICKS
        active = [d for d in devs if recent[d] and len(self._hist[stream][d]) > 0]
        struck = [d for d in active if self._strikes[stream, d] >= CHANGE_TICKS]
        self.changes += 1
        if (len(struck) * 2 >= max(len(active), 1) and len(active) > 1) or len(active) <= 1:
            self._forget_stream(stream)  # phase change
        else:  # one device changed (ECC storm, ...): forget that device
            self._hist[stream][device].clear()
            self._anchor[stream][device].clear()
            self._strikes[stream, device] = 0
            self.eff_sd[stream, device] = 1.0

    def _forget_stream(self, stream: int) -> None:
        for d in np.flatnonzero(self.facts.membership[stream]):
            self._hist[stream][d].clear()
            self._anchor[stream][d].clear()
            self._strikes[stream, d] = 0
        self.eff_sd[stream] = 1.0
        self.est[stream].fitted = False
        self.est[stream].n_obs = 0
        self._dirty[stream] = True

    def predict_rate(self, stream: int, device: int, cap_w: float) -> float:
        f = self.facts
        e = self.est[stream]
        dyn = f.tdp_w[device] - f.idle_w[device]
        x = min(1.0, max(cap_w - f.idle_w[device], 0.0) / (e.util * dyn))
        return float(f.peak_rate[device] * self.eff_sd[stream, device] * e.util * x**e.beta)

    def refit(self, prior_beta: Array | None = None) -> None:
        for s in np.flatnonzero(self._dirty):
            self._fit(int(s), None if prior_beta is None else float(prior_beta[s]))
        self._dirty[:] = False

    def _fit(self, s: int, prior_beta: float | None) -> None:
        f = self.facts
        rows = []
        for d in np.flatnonzero(f.membership[s]):
            for obs in (*self._hist[s][d], *self._anchor[s][d]):
                rows.append((d, *obs))
        if not rows:
            return
        arr = np.array(rows)
        dev = arr[:, 0].astype(np.int64)
        cap, p_obs, r_obs, busy = arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4]
        idle = f.idle_w[dev]
        dyn = f.tdp_w[dev] - idle
        beta0 = self.est[s].beta if prior_beta is None else prior_beta
        # x for every u on the grid: (U, n)
        head = np.maximum(cap - idle, 1e-9) / dyn
        x = np.minimum(1.0, head[None, :] / U_GRID[:, None])
        lx = np.log(x)
        y = np.log(r_obs / f.peak_rate[dev])[None, :] - np.log(U_GRID)[:, None]
        # within-device centering
        uniq, inv = np.unique(dev, return_inverse=True)
        cnt = np.bincount(inv)

        onehot = np.zeros((len(inv), len(uniq)))
        onehot[np.arange(len(inv)), inv] = 1.0 / cnt[inv]

        def dev_mean(v: Array) -> Array:
            return v @ onehot

        # Per-device efficiency (log intercept) shrunk toward 1 by EFF_RIDGE pseudo-observations:
        # a healthy device is as efficient as its datasheet, so capped observations alone
        # identify u (through the intercept (1-β)·log u) instead of trading it for efficiency.
        mx, my = dev_mean(lx), dev_mean(y)
        k = (cnt / (cnt + EFF_RIDGE))[None, :]
        a_r, b_r = y - (k * my)[:, inv], lx - (k * mx)[:, inv]
        a_p, b_p = np.sqrt(EFF_RIDGE) * k * my, np.sqrt(EFF_RIDGE) * k * mx
        sxx = (b_r * b_r).sum(axis=1) + (b_p * b_p).sum(axis=1)
        sxy = (a_r * b_r).sum(axis=1) + (a_p * b_p).sum(axis=1)
        beta = np.clip((sxy + PRIOR_WEIGHT * beta0) / (sxx + PRIOR_WEIGHT), 0.02, 1.0)
        icpt = k * (my - beta[:, None] * mx)  # log eff per device
        resid_r = (y - beta[:, None] * lx - icpt[:, inv]) / RATE_SIGMA
        p_pred = idle[None, :] + x * U_GRID[:, None] * dyn[None, :]
        zp = (p_obs[None, :] - p_pred) / (POWER_SIGMA * np.maximum(p_obs, 1.0) / busy + 1.0)
        loss = np.minimum(resid_r**2, 25.0).sum(axis=1) + np.minimum(zp**2, 9.0).sum(axis=1)
        loss += PRIOR_WEIGHT * (beta - beta0) ** 2 / RATE_SIGMA**2
        loss += EFF_RIDGE * (icpt**2).sum(axis=1) / RATE_SIGMA**2
        best = loss.min()
        # Near-ties (u is not identified while every observation is capped): keep the u closest
        # to the previous estimate; the SLO guard's back-off to tdp_w yields uncapped data.
        ties = np.flatnonzero(loss <= best + 1.0)
        i = int(ties[np.argmin(np.abs(U_GRID[ties] - self.est[s].util))])
        anchored = any(len(self._anchor[s][d]) for d in np.flatnonzero(f.membership[s]))
        # Usable once u is pinned by an uncapped reading, or after a few capped ones (a power
        # budget may never allow an uncapped reading; the ridge and the prior then identify it).
        fitted = anchored or len(rows) >= MIN_OBS_CAPPED
        self.est[s] = StreamEstimate(float(U_GRID[i]), float(beta[i]), fitted, len(rows))
        eff = np.exp(icpt[i])
        for j, d in enumerate(uniq):
            if cnt[j] > 0:
                self.eff_sd[s, d] = float(np.clip(eff[j], 0.3, 1.05))
        self._update_eff()

    def _update_eff(self) -> None:
        f = self.facts
        has = np.array(
            [[len(self._hist[s][d]) > 0 for d in range(f.n_devices)] for s in range(f.n_streams)]
        )
        self.eff = np.where(has, self.eff_sd, np.inf).min(axis=0)
        self.eff = np.where(np.isfinite(self.eff), self.eff, 1.0)
