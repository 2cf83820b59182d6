"""The device metrics a ``telemetry.samples`` v1 payload may carry, with units and physical bounds.

This table is the single definition: the collectors name their columns from it, the ingest stage
validates against it, the sinks map it to InfluxDB fields and docs/schemas.md is checked against it.
A metric a device does not support is absent (``null`` in its column), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    low: float
    high: float
    description: str


_GIB = 1 << 30

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("power_w", "W", 0.0, 5_000.0, "board power, driver's 1 s average"),
        Metric("power_instant_w", "W", 0.0, 10_000.0, "instantaneous board power"),
        Metric("energy_j", "J", 0.0, 1e18, "cumulative energy since driver load (counter)"),
        Metric("cap_w", "W", 0.0, 5_000.0, "enforced power limit"),
        Metric("temp_c", "degC", -60.0, 200.0, "core / die temperature"),
        Metric("mem_temp_c", "degC", -60.0, 200.0, "memory (HBM) temperature"),
        Metric("util_compute_pct", "%", 0.0, 100.0, "compute utilization"),
        Metric("util_mem_pct", "%", 0.0, 100.0, "memory-bandwidth utilization"),
        Metric("mem_used_bytes", "B", 0.0, 1024.0 * _GIB, "device memory in use"),
        Metric("mem_total_bytes", "B", 0.0, 1024.0 * _GIB, "device memory total"),
        Metric("clock_sm_mhz", "MHz", 0.0, 10_000.0, "SM / core clock"),
        Metric("clock_mem_mhz", "MHz", 0.0, 20_000.0, "memory clock"),
        Metric("pstate", "1", 0.0, 32.0, "performance state (0 = fastest)"),
        Metric("throttle_reasons_mask", "bitmask", 0.0, 2.0**63, "NVML clocks-event reasons bits"),
        Metric("fan_pct", "%", 0.0, 100.0, "fan speed"),
        Metric("ecc_corrected_total", "count", 0.0, 1e18, "corrected ECC errors (counter)"),
        Metric("ecc_uncorrected_total", "count", 0.0, 1e18, "uncorrected ECC errors (counter)"),
        Metric("retired_pages_total", "count", 0.0, 1e9, "retired memory pages"),
        Metric("remapped_rows_total", "count", 0.0, 1e9, "remapped memory rows"),
        Metric("pcie_replay_total", "count", 0.0, 1e18, "PCIe replay counter"),
        Metric("nvlink_errors_total", "count", 0.0, 1e18, "NVLink CRC/replay/recovery errors"),
        Metric("process_count", "count", 0.0, 1e6, "compute processes on the device"),
        Metric("work_rate", "units/s", 0.0, 1e15, "work delivered, as the application reports"),
    )
}
