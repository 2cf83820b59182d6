"""What the optimizer may observe of a simulated fleet, per device and tick (spec: "Telemetry the
optimizer may see"), and the sensor model that turns true values into readings.

Arrays are one value per device in scenario order. A device that reports nothing (``off_bus``)
has ``reporting[d] = False`` and ``NaN`` in every column; :meth:`DeviceTelemetry.to_metrics`
turns those into ``None``, the ``telemetry.samples`` convention for "not reported".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

# NVML clocks-event (throttle) reason bits used by the simulator.
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_THERMAL_SLOWDOWN = 0x40
# The XID a driver logs when a GPU has fallen off the bus; counted when the device comes back.
XID_FALLEN_OFF_BUS = 79


@dataclass(frozen=True, slots=True)
class SensorModel:
    """Noise and counters of the simulated sensors.

    ``power_noise_rel``: spec "Gaussian noise sigma = 2% of reading". ``spike_noise_rel``: spec
    ``power_spike`` "reported power +30% noise", read as an *additional* zero-mean Gaussian term
    with sigma = 30% of the reading, on top of the usual 2% (the true power is unchanged: a sensor
    fault). ``ecc_storm_errors_per_s``: mean rate (Poisson) at which the corrected-ECC counter
    climbs during an ``ecc_storm``. ``power_average_s``: the reported power is the mean true power
    over this window (NVML's 1 s average); with ``tick_s >= 1`` that is the tick's own mean.
    """

    power_noise_rel: float = 0.02
    spike_noise_rel: float = 0.30
    ecc_storm_errors_per_s: float = 50.0
    power_average_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ThermalModel:
    """A first-order thermal model (not part of the spec; only ``temp_c`` depends on it).

    The die temperature relaxes towards ``T_ss = ambient_c + rise_at_tdp_c · P / tdp_w`` with time
    constant ``time_constant_s``: ``T ← T_ss + (T - T_ss) · exp(-tick_s / τ)``, using the tick's
    mean true power ``P``. During a ``thermal_throttle`` fault the cooling is degraded (a failed
    fan, a blocked inlet): ``T_ss`` is raised by ``throttle_rise_c``. Devices start at their idle
    steady state.
    """

    ambient_c: float = 30.0
    rise_at_tdp_c: float = 50.0
    time_constant_s: float = 30.0
    throttle_rise_c: float = 45.0

    def steady_state_c(self, power_w: Array, tdp_w: Array, cooling_fault: Mask) -> Array:
        return (
            self.ambient_c
            + self.rise_at_tdp_c * power_w / tdp_w
            + np.where(cooling_fault, self.throttle_rise_c, 0.0)
        )

    def advance(
        self, temp_c: Array, power_w: Array, tdp_w: Array, cooling_fault: Mask, dt_s: float
    ) -> Array:
        ss = self.steady_state_c(power_w, tdp_w, cooling_fault)
        return ss + (temp_c - ss) * math.exp(-dt_s / self.time_constant_s)


@dataclass(frozen=True, slots=True)
class DeviceTelemetry:
    """One tick of per-device readings. ``NaN`` where ``reporting`` is False (off the bus).

    ``power_w``: noisy 1 s average; ``util_pct``: busy fraction of the tick x 100; ``temp_c``:
    the thermal model; ``cap_w``: the power limit the device enforces (after the fleet budget;
    a thermal throttle does not change it, it shows in ``throttle_reasons_mask`` and in power);
    ``work_rate``: work units/s delivered, exact, as the application reports it;
    ``ecc_corrected_total`` and ``xid_total``: counters since the start of the run.
    """

    tick: int
    ts_ns: int
    device_ids: tuple[str, ...]
    reporting: Mask
    power_w: Array
    util_pct: Array
    temp_c: Array
    cap_w: Array
    work_rate: Array
    ecc_corrected_total: Array
    xid_total: Array
    throttle_reasons_mask: Array

    def to_metrics(self) -> dict[str, list[float | None]]:
        """Columns named after :data:`accelpilot.schemas.metrics.METRICS` (``None`` = absent)."""
        cols = {
            "power_w": self.power_w,
            "util_compute_pct": self.util_pct,
            "temp_c": self.temp_c,
            "cap_w": self.cap_w,
            "work_rate": self.work_rate,
            "ecc_corrected_total": self.ecc_corrected_total,
            "throttle_reasons_mask": self.throttle_reasons_mask,
        }
        return {
            name: [None if math.isnan(v) else v for v in arr.tolist()] for name, arr in cols.items()
        }
