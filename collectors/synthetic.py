"""Deterministic synthetic host ticks: test data and the load generator's payloads.

Not a fleet simulator (that is the spec's physics in the optimizer): values are plausible,
reproducible per seed and cheap to make, so tests can predict exactly what must land downstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from accelpilot.schemas.samples import HostSample

_GIB = float(1 << 30)


def synthetic_samples(
    host_id: str,
    *,
    n_devices: int = 8,
    n_ticks: int = 10,
    start_ns: int,
    interval_s: float = 1.0,
    seed: int = 0,
    first_seq: int = 0,
) -> Iterator[HostSample]:
    """``n_ticks`` samples of one host with ``n_devices`` GPUs, ``interval_s`` apart."""
    rng = np.random.default_rng(seed)
    device_ids = [f"{host_id}/gpu{i}" for i in range(n_devices)]
    kinds = ["gpu"] * n_devices
    energy_j = np.zeros(n_devices)
    step_ns = int(interval_s * 1e9)
    for tick in range(n_ticks):
        util = np.clip(
            70 + 25 * np.sin(tick / 30 + np.arange(n_devices)) + rng.normal(0, 3, n_devices), 0, 100
        )
        power_w = 80 + 6.2 * util + rng.normal(0, 5, n_devices)
        energy_j += power_w * interval_s
        yield HostSample(
            host_id=host_id,
            ts_ns=start_ns + tick * step_ns,
            seq=first_seq + tick,
            interval_s=interval_s,
            device_ids=device_ids,
            device_kinds=kinds,  # type: ignore[arg-type]
            metrics={
                "power_w": np.round(power_w, 3).tolist(),
                "energy_j": np.round(energy_j, 3).tolist(),
                "cap_w": [700.0] * n_devices,
                "temp_c": np.round(35 + 0.45 * util + rng.normal(0, 0.5, n_devices), 2).tolist(),
                "util_compute_pct": np.round(util, 2).tolist(),
                "mem_used_bytes": np.round((20 + 0.5 * util) * _GIB).tolist(),
                "mem_total_bytes": [80 * _GIB] * n_devices,
                "clock_sm_mhz": np.round(1980 - 2 * (100 - util)).tolist(),
            },
        )
