"""`accelpilot bench collector`: our CPU time per device-tick and the bytes per tick on the wire.

The sim backend stands in for the hardware; the simulator's own physics is timed separately and
reported apart, so ``collector_cpu_us_per_device_tick`` is what the agent itself costs per device
(read the backend's columns, build and encode the payload, append it to the disk buffer).
Where ``nvidia-smi`` exists it is run side by side (``nvidia-smi -q -x``, Telegraf's way) and the
ratio is measured; elsewhere the ratio is taken against the documented anchor (0.39 s per call for
one GPU, ARCHITECTURE.md) and labelled as such.
"""

from __future__ import annotations

import gzip
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.sampler import Sampler
from accelpilot.optimizer.scenario import parse_scenario
from accelpilot.schemas import codec

NVIDIA_SMI_ANCHOR_S = 0.39  # wall seconds per `nvidia-smi -q -x` call, 1 GPU (Telegraf issue)


def _scenario(n_devices: int) -> dict[str, Any]:
    devices = [
        {
            "id": f"bench/gpu{i}",
            "kind": "gpu",
            "vendor": "nvidia",
            "model": "H100-SXM",
            "idle_w": 70,
            "tdp_w": 700,
            "min_cap_w": 200,
            "peak_rate": 1000.0,
        }
        for i in range(n_devices)
    ]
    return {
        "name": f"bench-{n_devices}",
        "duration_s": 100_000,
        "tick_s": 1,
        "seed": 1,
        "objective": {"max_slowdown": 1.1, "fleet_power_budget_w": None},
        "devices": devices,
        "streams": [
            {
                "id": "s",
                "demand_rate": 700.0 * n_devices,
                "devices": [d["id"] for d in devices],
                "phases": [{"at_s": 0, "beta": 0.3, "util": 0.9}],
            }
        ],
    }


def _cpu_s() -> float:
    return time.thread_time()


def bench_devices(n_devices: int, ticks: int, buffer_dir: Path | None = None) -> dict[str, Any]:
    fleet = SimFleet(parse_scenario(_scenario(n_devices)))
    backend = SimBackend(fleet, "bench", advances=False)
    sampler = Sampler("bench", [backend], backend.discover(), 1.0)
    buffer = _buffer(buffer_dir)
    sim_cpu = ours_cpu = 0.0
    raw_bytes = gz_bytes = 0
    for _ in range(ticks):
        t0 = _cpu_s()
        fleet.advance()  # the simulated hardware: not ours
        t1 = _cpu_s()
        sample = sampler.sample()
        payload = codec.encode(sample)
        if buffer is not None:
            buffer.append(b"bench", payload, sample.ts_ns)
        t2 = _cpu_s()
        sim_cpu += t1 - t0
        ours_cpu += t2 - t1
        raw_bytes += len(payload)
        gz_bytes += len(gzip.compress(payload, 6))
    per_dev_tick_us = 1e6 * ours_cpu / (ticks * n_devices)
    return {
        "devices": n_devices,
        "ticks": ticks,
        "collector_cpu_us_per_device_tick": round(per_dev_tick_us, 2),
        "collector_cpu_us_per_tick": round(1e6 * ours_cpu / ticks, 1),
        "simulator_cpu_us_per_tick": round(1e6 * sim_cpu / ticks, 1),
        "bytes_per_tick": round(raw_bytes / ticks),
        "bytes_per_tick_gzip": round(gz_bytes / ticks),
        "disk_buffer": buffer is not None,
    }


def _buffer(buffer_dir: Path | None) -> Any:
    if buffer_dir is None:
        return None
    try:
        from accelpilot.collectors.disk_buffer import DiskBuffer
    except ImportError:
        return None
    return DiskBuffer(buffer_dir, max_bytes=1 << 30)


def nvidia_smi_cpu_s(calls: int = 5) -> float | None:
    """Children CPU seconds per `nvidia-smi -q -x` call, or None where there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(calls):
        subprocess.run([exe, "-q", "-x"], capture_output=True, check=False, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / calls


def bench_collector(ticks: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_devices(n, ticks, Path(tmp) / f"b{n}") for n in (8, 64)]
    smi = nvidia_smi_cpu_s()
    per_sample_ours_s = results[0]["collector_cpu_us_per_device_tick"] / 1e6
    if smi is not None:
        ratio, basis = smi / per_sample_ours_s, "measured nvidia-smi -q -x CPU, this machine"
    else:
        ratio = NVIDIA_SMI_ANCHOR_S / per_sample_ours_s
        basis = "no nvidia-smi here: anchor 0.39 s wall per call for 1 GPU (ARCHITECTURE.md)"
    return {
        "benchmark": "collector",
        "results": results,
        "goal_us_per_device_tick": 100,
        "nvidia_smi_s_per_call": smi,
        "ratio_vs_nvidia_smi_per_sample": round(ratio),
        "ratio_basis": basis,
    }
