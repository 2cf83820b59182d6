"""Random, spec-valid fleet scenarios for training and for unseen-scenario tests.

``generate(seed)`` draws a heterogeneous fleet (gpu/npu/cpu/tpu kinds with realistic limits),
2-3 streams over overlapping device sets, phases whose ``util``/``beta`` are correlated the way
workloads are (compute-bound: high util, high beta; memory-bound: lower both), demand changes
including low-demand periods, faults of every type and sometimes a fleet power budget. The result
goes through :func:`~accelpilot.optimizer.scenario.parse_scenario`, so it is valid by
construction.

>>> sc = generate(1, duration_s=600)
>>> sc.duration_s, len(sc.devices) >= 3
(600.0, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accelpilot.optimizer.scenario import Scenario, parse_scenario

# (kind, vendor, model, idle_w, tdp_w, min_cap_w, peak_rate)
DEVICE_MODELS: tuple[tuple[str, str, str, float, float, float, float], ...] = (
    ("gpu", "nvidia", "H100-SXM", 70, 700, 200, 1000.0),
    ("gpu", "nvidia", "A100-SXM4", 55, 400, 150, 700.0),
    ("gpu", "amd", "MI300X", 90, 750, 300, 1100.0),
    ("npu", "huawei", "Ascend-910B", 60, 400, 150, 640.0),
    ("tpu", "google", "TPU-v5e", 40, 250, 120, 420.0),
    ("cpu", "intel", "Xeon-8480+", 80, 350, 150, 90.0),
)


def draw_phase(rng: np.random.Generator) -> tuple[float, float]:
    """A workload character: ``(util, beta)``, correlated (compute- vs memory-bound)."""
    compute = rng.uniform()
    util = float(np.clip(0.55 + 0.4 * compute + rng.normal(0, 0.05), 0.3, 1.0))
    beta = float(np.clip(0.08 + 0.3 * compute + rng.normal(0, 0.04), 0.05, 0.6))
    return round(util, 3), round(beta, 3)


def generate(seed: int, *, duration_s: float = 1800, n_devices: int | None = None) -> Scenario:
    rng = np.random.default_rng(seed)
    n_dev = int(n_devices or rng.integers(3, 9))
    kinds = rng.choice(len(DEVICE_MODELS), size=rng.integers(1, 3), replace=False)
    devices: list[dict[str, Any]] = []
    for i in range(n_dev):
        kind, vendor, model, idle, tdp, lo, peak = DEVICE_MODELS[int(rng.choice(kinds))]
        devices.append(
            {
                "id": f"node{i // 4}/{kind}{i % 4}",
                "kind": kind,
                "vendor": vendor,
                "model": model,
                "idle_w": idle,
                "tdp_w": tdp,
                "min_cap_w": lo,
                "peak_rate": peak,
                "wake_s": float(rng.choice([5, 20, 30])),
            }
        )
    ids = [d["id"] for d in devices]
    n_str = int(rng.integers(1, 4)) if n_dev >= 4 else 1
    order = rng.permutation(n_dev)
    groups = np.array_split(order, n_str)
    streams: list[dict[str, Any]] = []
    for s, grp in enumerate(groups):
        members = [ids[i] for i in grp]
        if s > 0 and rng.uniform() < 0.4:  # share one device with the previous stream
            extra = ids[int(groups[s - 1][0])]
            if extra not in members:
                members.append(extra)
        cap_full = sum(devices[ids.index(m)]["peak_rate"] for m in members)
        phases = []
        t = 0.0
        while t < duration_s:
            util, beta = draw_phase(rng)
            load = float(rng.choice([rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.85)]))
            phase: dict[str, Any] = {
                "at_s": t,
                "beta": beta,
                "util": util,
                "demand_rate": round(load * cap_full * util, 1),
            }
            if rng.uniform() < 0.1:
                phase["demand_rate"] = 0.0
            phases.append(phase)
            t += float(rng.choice([300, 600, 900]))
        if phases[0]["demand_rate"] == 0.0:
            phases[0]["demand_rate"] = round(0.3 * cap_full * phases[0]["util"], 1)
        streams.append({"id": f"stream{s}", "devices": members, "phases": phases})
    faults = []
    for _ in range(int(rng.integers(0, 3))):
        faults.append(
            {
                "at_s": float(
                    rng.integers(min(60, int(duration_s // 5)), max(int(duration_s * 0.8), 2))
                ),
                "device": ids[int(rng.integers(n_dev))],
                "type": str(
                    rng.choice(["thermal_throttle", "off_bus", "ecc_storm", "power_spike"])
                ),
                "duration_s": float(rng.choice([60, 120, 300])),
            }
        )
    budget = None
    if rng.uniform() < 0.3:
        tdp = sum(d["tdp_w"] for d in devices)
        lo = sum(d["min_cap_w"] for d in devices)
        budget = round(lo + rng.uniform(0.5, 0.9) * (tdp - lo), 0)
    doc = {
        "name": f"generated-{seed}",
        "duration_s": duration_s,
        "tick_s": 1,
        "seed": seed,
        "objective": {
            "max_slowdown": float(rng.choice([1.05, 1.1, 1.15, 1.2])),
            "fleet_power_budget_w": budget,
        },
        "devices": devices,
        "streams": streams,
        "faults": faults,
    }
    return parse_scenario(doc)


def to_json_dict(sc: Scenario) -> dict[str, Any]:
    """A scenario back as the spec's JSON document."""
    return {
        "name": sc.name,
        "duration_s": sc.duration_s,
        "tick_s": sc.tick_s,
        "seed": sc.seed,
        "objective": {
            "max_slowdown": sc.objective.max_slowdown,
            "fleet_power_budget_w": sc.objective.fleet_power_budget_w,
        },
        "devices": [
            {
                "id": d.id,
                "kind": d.kind,
                "vendor": d.vendor,
                "model": d.model,
                "idle_w": d.idle_w,
                "tdp_w": d.tdp_w,
                "min_cap_w": d.min_cap_w,
                "peak_rate": d.peak_rate,
                "standby_w": d.standby_w,
                "wake_s": d.wake_s,
            }
            for d in sc.devices
        ],
        "streams": [
            {
                "id": s.id,
                "devices": list(s.devices),
                "phases": [
                    {
                        "at_s": p.at_s,
                        "beta": p.beta,
                        "util": p.util,
                        **({} if p.demand_rate is None else {"demand_rate": p.demand_rate}),
                    }
                    for p in s.phases
                ],
            }
            for s in sc.streams
        ],
        "faults": [
            {"at_s": f.at_s, "device": f.device, "type": f.type, "duration_s": f.duration_s}
            for f in sc.faults
        ],
    }
