"""A deterministic, vectorized simulator of one scenario (shared/spec/fleet-scenarios.md).

Each :meth:`FleetSimulator.step` takes the optimizer's decision for one tick — power caps, each
stream's weights over its devices, and which devices to park in standby — and returns the
telemetry the optimizer may observe plus the true accounting, which the simulator also sums for
the report (:meth:`FleetSimulator.totals`).

Decisions and their meaning:

- ``caps_w`` (devices,): must lie in ``[min_cap_w, tdp_w]`` per device (``ValueError``
  otherwise, as NVML rejects an out-of-range limit). If their sum exceeds
  ``fleet_power_budget_w`` they are *clipped*, not refused: every device keeps ``min_cap_w`` and
  the headroom above it shrinks by one common factor (:func:`physics.clip_caps_to_budget`), so the
  spec's ``max`` baseline (every cap at ``tdp_w``) runs on a budgeted fleet. ``cap_w`` in the
  telemetry is the enforced value and ``TickTruth.budget_clipped`` says it happened. All devices
  count, parked and off-bus ones included ("the sum of all caps").
- ``weights`` (streams, devices): non-negative, zero outside a stream's own devices
  (``ValueError`` otherwise); each row is normalized to sum to 1 (weights are relative shares of
  the stream's demand). A row of zeros leaves the stream unserved. A share given to a device that
  cannot work (parked, waking, off the bus) is lost for that tick, not rerouted: routing is the
  optimizer's decision. Demand not served in a tick is not queued.
- ``standby`` (devices,) bool: True parks the device from this tick on (draws ``standby_w``, does
  no work, entering is immediate). False on a parked device starts waking it: it draws ``idle_w``
  and does no work for ``wake_s`` seconds, then works (a wake that ends mid-tick leaves the rest
  of that tick for work). Parking a device that still has a share is allowed; its share is lost.

Several streams on one device share its time (see :func:`physics.time_share`): stream ``s``
needs ``assigned_s / R_s`` of the tick; if the total exceeds the time available, each stream gets
the same fraction of its assigned demand (served in proportion to assigned demand).

Faults (the optimizer never sees the schedule): ``thermal_throttle`` makes the effective cap
``min_cap_w`` and heats the device; ``off_bus`` delivers nothing, reports nothing (``NaN``/
``None``), ignores commands and draws ``idle_w``; it comes back awake (un-parked) and its
``xid_total`` counts one XID 79; ``ecc_storm`` scales ``R(c)`` by 0.8 (the partial-share power
then uses the reduced rate, so each unit costs more) and the corrected-ECC counter climbs;
``power_spike`` adds 30% Gaussian noise to the *reported* power only.

SLO: a stream violates in a tick when served less than ``min(demand_rate, uncapped) /
max_slowdown`` (relative tolerance ``physics.SLO_RTOL``), where ``uncapped`` is what its devices
could deliver with caps at ``tdp_w``, each serving this stream alone, under that tick's faults
(see :class:`~accelpilot.optimizer.timeline.TimelineWindow`); parking is a decision, so parked
devices still count.

Determinism: all randomness comes from ``numpy.random.default_rng(seed)`` (the scenario's seed
unless overridden) and is drawn per window of ticks independently of the decisions, so every
policy run on one scenario and seed sees the same noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from accelpilot.optimizer import physics
from accelpilot.optimizer.accounting import Ledger, TickTruth, Totals
from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.telemetry import (
    THROTTLE_HW_THERMAL_SLOWDOWN,
    THROTTLE_SW_POWER_CAP,
    DeviceTelemetry,
    SensorModel,
    ThermalModel,
)
from accelpilot.optimizer.timeline import (
    ECC_STORM_RATE_FACTOR,
    Conditions,
    Timeline,
)

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

WINDOW_TICKS = 1024


@dataclass(frozen=True, slots=True)
class Controls:
    """One tick's decision; ``None`` means: caps at ``tdp_w`` / even weights / nobody parked."""

    caps_w: ArrayLike | None = None
    weights: ArrayLike | None = None
    standby: ArrayLike | None = None


@dataclass(frozen=True, slots=True)
class StepResult:
    telemetry: DeviceTelemetry
    truth: TickTruth


Policy = Callable[[StepResult | None], Controls]


class FleetSimulator:
    """Simulates ``scenario`` tick by tick; see the module docstring for the rules."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None = None,
        start_ns: int = 0,
        sensors: SensorModel | None = None,
        thermal: ThermalModel | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.start_ns = start_ns
        self.sensors = sensors or SensorModel()
        self.thermal = thermal or ThermalModel()
        self.timeline = Timeline(scenario)
        self.membership: Mask = self.timeline.membership
        self.device_ids = scenario.device_ids
        self.stream_ids = scenario.stream_ids
        self.n_ticks = scenario.n_ticks
        self.tick_s = scenario.tick_s
        devs = scenario.devices
        self.idle_w = np.array([d.idle_w for d in devs])
        self.tdp_w = np.array([d.tdp_w for d in devs])
        self.min_cap_w = np.array([d.min_cap_w for d in devs])
        self.peak_rate = np.array([d.peak_rate for d in devs])
        self.standby_w = np.array([d.standby_w for d in devs])
        self.wake_s = np.array([d.wake_s for d in devs])
        self._range_w = self.tdp_w - self.idle_w
        self._cap_tol_w = 1e-9 * self.tdp_w
        self._budget_w = scenario.objective.fleet_power_budget_w
        n_dev, n_str = len(devs), len(scenario.streams)
        counts = self.membership.sum(axis=1, keepdims=True)
        self.even_weights: Array = self.membership / counts
        self._no_standby = np.zeros(n_dev, dtype=bool)
        self._outside = ~self.membership
        # State.
        self._k: int = 0
        self._parked = np.zeros(n_dev, dtype=bool)
        self._wake_left_s = np.zeros(n_dev)
        self._was_off = np.zeros(n_dev, dtype=bool)
        self._temp_c = self.thermal.steady_state_c(self.idle_w, self.tdp_w, self._no_standby)
        self._ecc_total = np.zeros(n_dev)
        self._xid_total = np.zeros(n_dev)
        self._avg_ticks = max(1, round(self.sensors.power_average_s / self.tick_s))
        self._power_ring = np.zeros((self._avg_ticks, n_dev))
        self._ledger = Ledger(n_dev, n_str)
        rng_power, rng_spike, rng_ecc = np.random.default_rng(self.seed).spawn(3)
        self._rng_power, self._rng_spike, self._rng_ecc = rng_power, rng_spike, rng_ecc
        self._quiet = True  # nobody parked or waking
        self._off_before = False
        self._ones = np.ones(n_dev)
        # Arrays handed out in telemetry/truth without copying must not be changed by a reader.
        for arr in (
            self.idle_w,
            self.tdp_w,
            self.min_cap_w,
            self.peak_rate,
            self.standby_w,
            self.wake_s,
            self.membership,
            self.even_weights,
            self._no_standby,
            self._ones,
        ):
            arr.flags.writeable = False
        self._load_window(0)

    # -- public ----------------------------------------------------------------------------

    @property
    def tick(self) -> int:
        """Index of the next tick to simulate."""
        return self._k

    @property
    def time_s(self) -> float:
        return self._k * self.tick_s

    @property
    def done(self) -> bool:
        return self._k >= self.n_ticks

    def totals(self) -> Totals:
        """The true accounting summed over the ticks run so far."""
        return self._ledger.totals()

    def conditions(self) -> Conditions:
        """The truth of the next tick (phase parameters, faults, SLO): for the oracle only."""
        return self.timeline.conditions(self._k)

    def run(self, policy: Policy | None = None) -> Totals:
        """Run to the end. ``policy(last_result)`` (``None`` before the first tick) returns the
        :class:`Controls` of the next tick; without a policy every tick gets ``Controls()``."""
        last: StepResult | None = None
        fixed = Controls()
        while self._k < self.n_ticks:
            c = policy(last) if policy is not None else fixed
            last = self.step(c.caps_w, c.weights, c.standby)
        return self.totals()

    def step(
        self,
        caps_w: ArrayLike | None = None,
        weights: ArrayLike | None = None,
        standby: ArrayLike | None = None,
    ) -> StepResult:
        """Advance one tick under the given decision (see the module docstring)."""
        k = self._k
        if k >= self.n_ticks:
            raise RuntimeError(f"scenario {self.scenario.name!r} has ended after {k} ticks")
        if k >= self._win_end:
            self._load_window(k)
        win = self._win
        i = k - win.k0
        tick_s = self.tick_s
        caps = self._checked_caps(caps_w)
        enforced = physics.clip_caps_to_budget(caps, self.min_cap_w, self._budget_w)
        share = self._checked_weights(weights)
        park = self._checked_standby(standby)
        faulty = self._faulty[i]
        off = win.off_bus[i]
        throttle = win.throttle[i]

        # Power states: park / wake. Commands do not reach a device off the bus; it comes back
        # awake. (Fast path: nobody parked, waking or asked to park.)
        if self._quiet and not faulty and not park.any():
            parked = wake_left = self._no_standby
            available = self._ones
        else:
            wake_left = np.where(self._parked & ~park, self.wake_s, self._wake_left_s)
            parked = park & ~off
            wake_left = np.where(parked | off, 0.0, wake_left)
            available = np.clip(1.0 - wake_left / tick_s, 0.0, 1.0)
            available[parked | off] = 0.0

        # Physics over (streams, devices).
        util = win.util[i][:, None]
        cap_eff = np.where(throttle, self.min_cap_w, enforced) if faulty else enforced
        p_dem = self.idle_w + util * self._range_w
        p = np.minimum(p_dem, cap_eff)
        rate = physics.full_load_rate(
            self.peak_rate, util, win.beta[i][:, None], p, p_dem, self.idle_w
        )
        if faulty:
            rate = rate * np.where(win.ecc_storm[i], ECC_STORM_RATE_FACTOR, 1.0)
        busy, served = physics.time_share(share * win.demand_rate[i][:, None], rate, available)
        power = physics.shared_power_w(self.idle_w, p, busy)
        if parked is not self._no_standby:
            power = np.where(parked, self.standby_w, power)

        # Telemetry.
        if self._avg_ticks == 1:
            mean_power = power
        else:
            self._power_ring[k % self._avg_ticks] = power
            mean_power = self._power_ring[: min(k + 1, self._avg_ticks)].mean(axis=0)
        noise = self._noise[i]
        if faulty:
            noise = noise + np.where(win.power_spike[i], self._spike_noise[i], 0.0)
        reported_power = np.maximum(mean_power * (1.0 + noise), 0.0)
        self._temp_c = self.thermal.advance(self._temp_c, power, self.tdp_w, throttle, tick_s)
        busy_total = busy.sum(axis=0)
        mask = THROTTLE_SW_POWER_CAP * ((busy > 0) & (p_dem > cap_eff)).any(axis=0)
        if faulty:
            mask = mask + THROTTLE_HW_THERMAL_SLOWDOWN * throttle
            self._ecc_total = self._ecc_total + self._ecc_incr[i]
        if faulty or self._off_before:
            self._xid_total = self._xid_total + (self._was_off & ~off)
        work_rate = served.sum(axis=0)
        columns = [
            reported_power,
            100.0 * busy_total,
            self._temp_c,
            enforced,
            work_rate,
            self._ecc_total,
            self._xid_total,
            mask.astype(float),
        ]
        if faulty and self._any_off[i]:
            blank = np.where(off, np.nan, 0.0)  # off-bus devices report nothing
            columns = [c + blank for c in columns]
        telemetry = DeviceTelemetry(
            k,
            self.start_ns + round(k * tick_s * 1e9),
            self.device_ids,
            ~off,
            *columns,
        )

        # Truth.
        served_rate = served.sum(axis=1)
        slo_rate = win.slo_rate[i]
        truth = TickTruth(
            k,
            power,
            physics.energy_j(power, tick_s),
            cap_eff,
            parked,
            wake_left > 0,
            served,
            served_rate * tick_s,
            served_rate,
            slo_rate,
            physics.slo_violated(served_rate, slo_rate),
            enforced is not caps,
        )
        self._ledger.add(truth)
        if parked is not self._no_standby:
            self._parked = parked
            self._wake_left_s = np.maximum(wake_left - tick_s, 0.0)
            self._quiet = not (parked.any() or self._wake_left_s.any())
        self._was_off = off
        self._off_before = faulty and self._any_off[i]
        self._k = k + 1
        return StepResult(telemetry=telemetry, truth=truth)

    # -- internals -------------------------------------------------------------------------

    def _load_window(self, k0: int) -> None:
        n = min(WINDOW_TICKS, self.n_ticks - k0)
        win = self.timeline.window(k0, n)
        shape = (n, len(self.device_ids))
        sensors = self.sensors
        self._noise = sensors.power_noise_rel * self._rng_power.standard_normal(shape)
        self._spike_noise = sensors.spike_noise_rel * self._rng_spike.standard_normal(shape)
        lam = np.where(win.ecc_storm, sensors.ecc_storm_errors_per_s * self.tick_s, 0.0)
        self._ecc_incr = self._rng_ecc.poisson(lam).astype(float)
        any_fault = win.off_bus | win.throttle | win.ecc_storm | win.power_spike
        self._faulty = any_fault.any(axis=1).tolist()
        self._any_off = win.off_bus.any(axis=1).tolist()
        self._win = win
        self._win_end = k0 + n

    def _checked_caps(self, caps_w: ArrayLike | None) -> Array:
        if caps_w is None:
            return self.tdp_w
        caps = np.asarray(caps_w, dtype=float)
        if caps.shape != self.tdp_w.shape:
            raise ValueError(f"caps_w has shape {caps.shape}, expected {self.tdp_w.shape}")
        lo, hi = self.min_cap_w, self.tdp_w
        clipped = np.minimum(np.maximum(caps, lo), hi)
        ok = np.abs(clipped - caps) <= self._cap_tol_w  # NaN fails
        if not ok.all():
            bad = [
                f"{self.device_ids[d]}: {caps[d]:g} not in [{lo[d]:g}, {hi[d]:g}]"
                for d in np.flatnonzero(~ok)
            ]
            raise ValueError("caps_w out of the devices' limits: " + "; ".join(bad))
        return clipped

    def _checked_weights(self, weights: ArrayLike | None) -> Array:
        if weights is None:
            return self.even_weights
        w = np.asarray(weights, dtype=float)
        if w.shape != self.membership.shape:
            raise ValueError(f"weights has shape {w.shape}, expected {self.membership.shape}")
        sums = w.sum(axis=1, keepdims=True)
        if not ((w >= 0).all() and np.isfinite(sums).all()):  # NaN fails the first, inf the second
            raise ValueError("weights must be finite and >= 0")
        if (w * self._outside).any():
            s, d = np.argwhere((w != 0) & self._outside)[0]
            raise ValueError(
                f"weights[{s}, {d}]: device {self.device_ids[d]!r} "
                f"does not serve stream {self.stream_ids[s]!r}"
            )
        return np.divide(w, sums, out=np.zeros_like(w), where=sums > 0)

    def _checked_standby(self, standby: ArrayLike | None) -> Mask:
        if standby is None:
            return self._no_standby
        park = np.asarray(standby, dtype=bool)
        if park.shape != self._no_standby.shape:
            raise ValueError(f"standby has shape {park.shape}, expected {self._no_standby.shape}")
        return park
