"""Read-only checks of the NVML backend against the real driver.

Skipped wherever :meth:`NvmlBackend.probe` says NVML is unavailable (the reason is the skip
message). Nothing here sets anything on the device: no power limit, no clocks, no modes.
"""

from __future__ import annotations

import re
import time

import pytest

from accelpilot.collectors.backends.nvml import COLUMNS, NvmlBackend
from accelpilot.schemas.metrics import METRICS

pytestmark = pytest.mark.gpu

# What every data-center NVIDIA GPU answers; anything else may legitimately be None.
ALWAYS_PRESENT = ("power_w", "cap_w", "temp_c", "mem_used_bytes", "mem_total_bytes", "clock_sm_mhz")


def test_discover(nvml: NvmlBackend) -> None:
    devices = nvml.discover()
    assert devices
    assert [d.index for d in devices] == list(range(len(devices)))
    assert [d.device_id for d in devices] == [f"gpu-test/gpu{i}" for i in range(len(devices))]
    for d in devices:
        assert (d.backend, d.kind, d.vendor) == ("nvml", "gpu", "nvidia")
        assert d.model and d.model != "NVIDIA GPU"
        assert d.uuid is not None and d.uuid.startswith(("GPU-", "MIG-"))
        assert d.memory_total_bytes is not None and d.memory_total_bytes > 0
        c = d.capabilities
        assert c.driver_version and re.fullmatch(r"\d+\.\d+(\.\d+)?", c.driver_version)
        assert c.compute_capability is None or re.fullmatch(r"\d+\.\d+", c.compute_capability)
        if c.power_limits is not None:
            assert 0 < c.power_limits.min_w <= c.power_limits.default_w <= c.power_limits.max_w
        if c.mig_enabled:
            assert c.mig_supported
        assert c.nvlink_links is None or c.nvlink_links >= 0


def test_read_ten_times_within_metric_bounds(nvml: NvmlBackend) -> None:
    devices = nvml.discover()
    n = len(devices)
    last_energy: list[float | None] = [None] * n
    for _ in range(10):
        reading = nvml.read()
        assert list(reading.metrics) == list(COLUMNS)
        for name, column in reading.metrics.items():
            assert len(column) == n, name
            spec = METRICS[name]
            for value in column:
                assert value is None or spec.low <= value <= spec.high, (name, value)
        for name in ALWAYS_PRESENT:
            assert None not in reading.metrics[name], name
        assert reading.metrics["mem_total_bytes"] == [float(d.memory_total_bytes) for d in devices]
        for i, energy in enumerate(reading.metrics["energy_j"]):
            if energy is not None and last_energy[i] is not None:
                assert energy >= last_energy[i]  # a counter since driver load
            last_energy[i] = energy
        assert all(e.kind in ("xid", "fault") for e in reading.events)
        assert {e.device_id for e in reading.events} <= {d.device_id for d in devices}
        time.sleep(0.1)
    # Nothing had to be dropped to stay inside the bounds: the real values are in range.
    assert nvml.out_of_range == {}


def test_power_cap_is_readable_and_not_above_the_device_maximum(nvml: NvmlBackend) -> None:
    for d in nvml.discover():
        cap = nvml.power_cap_w(d.index)
        limits = d.capabilities.power_limits
        if cap is not None and limits is not None:
            # The enforced limit may sit below min_w under an out-of-band cap, never above max_w.
            assert 0 < cap <= limits.max_w + 1
