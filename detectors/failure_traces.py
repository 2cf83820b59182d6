"""Labelled fault traces from the project's fleet simulator, for the learned failure model.

A *trace* is one generated fleet scenario (:func:`accelpilot.optimizer.generate.generate` draws
the devices, streams and phases) whose fault schedule is replaced by a failure process, run
through :class:`~accelpilot.collectors.backends.sim.SimFleet` (the simulator and the XID events
the sim backend emits), with every device's readings fed to
:class:`~accelpilot.detectors.failure_rules.FailureRisk` exactly as the stream worker feeds it.

The failure process (this module's assumption, not measured fleet data; the simulator itself has
no notion of a device wearing out): a *failure* is the onset of an ``off_bus`` fault that lasts
to the end of the trace (the device is lost until it is replaced). Each device fails with
probability :data:`P_FAIL`, at a time drawn in ``[0.3, 0.95] x duration``. A failure is preceded,
except for a fraction :data:`P_SUDDEN` of sudden deaths, by a *degradation chain*: 2-5 episodes of
``ecc_storm`` and/or ``thermal_throttle`` (30-240 s each) at random times in the
``lead`` = 10-50 min before it. Every device, failing or not, also has *benign* transient episodes
(``thermal_throttle``, ``ecc_storm``, ``power_spike``, or a storm and a throttle together) at
:data:`BENIGN_PER_H` per hour, which lead to nothing. So an isolated storm is not a failure
sign, a cluster of them is, and sudden deaths cannot be predicted at all: the model has to
learn the difference the rules cannot see.

Labels: at a sample time ``t`` the device is *positive* if its failure onset ``f`` satisfies
``t < f <= t + horizon_s``; samples at or after ``f`` are not scored (the device has failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from accelpilot.collectors.backends.sim import SimFleet
from accelpilot.collectors.device import host_of
from accelpilot.detectors.failure_rules import XID_WEIGHTS, EventArrays, FailureRisk
from accelpilot.optimizer.generate import generate, to_json_dict
from accelpilot.optimizer.scenario import Scenario, parse_scenario

P_FAIL = 0.3
P_SUDDEN = 0.2
LEAD_MIN = (10.0, 50.0)
CHAIN_EPISODES = (2, 5)
EPISODE_S = (30.0, 60.0, 120.0, 240.0)
BENIGN_PER_H = 0.4
#: Episode kinds (several faults at once) and their probabilities, benign and in a chain.
BENIGN_KINDS = (("thermal_throttle",), ("ecc_storm",), ("power_spike",),
                ("ecc_storm", "thermal_throttle"))  # fmt: skip
BENIGN_P = (0.3, 0.3, 0.25, 0.15)
CHAIN_KINDS = (("ecc_storm",), ("thermal_throttle",), ("ecc_storm", "thermal_throttle"))
CHAIN_P = (0.5, 0.35, 0.15)
XID_OFF_BUS = 79


@dataclass(frozen=True)
class TraceSpec:
    """A family of traces: seeds and the fleet shape."""

    seeds: tuple[int, ...]
    duration_s: float
    n_devices: int | None  # None: generate's own draw (3-8)


#: Training traces and held-out traces: other seeds, longer runs, larger fleets.
TRAIN = TraceSpec(tuple(range(1000, 1080)), 7200.0, None)
TEST = TraceSpec(tuple(range(5000, 5024)), 10800.0, 12)
#: A small held-out set (1 h traces of 12 devices) for the fast reproduction test.
TEST_SMALL = TraceSpec((5000, 5001, 5002), 3600.0, 12)


def fault_schedule(
    rng: np.random.Generator, device_ids: Sequence[str], duration_s: float
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The failure process above: ``(faults, failure onset per device (inf = none))``."""
    faults: list[dict[str, Any]] = []
    fail_s = np.full(len(device_ids), np.inf)

    def episode(dev: str, at_s: float, kind: str) -> None:
        dur = float(rng.choice(EPISODE_S))
        at = float(np.clip(round(at_s), 0, duration_s - 1))
        faults.append({"at_s": at, "device": dev, "type": kind, "duration_s": dur})

    for i, dev in enumerate(device_ids):
        n_benign = rng.poisson(BENIGN_PER_H * duration_s / 3600.0)
        for _ in range(n_benign):
            at = rng.uniform(0, duration_s)
            for kind in BENIGN_KINDS[int(rng.choice(len(BENIGN_KINDS), p=BENIGN_P))]:
                episode(dev, at, kind)
        if rng.uniform() >= P_FAIL:
            continue
        f = float(round(rng.uniform(0.3, 0.95) * duration_s))
        fail_s[i] = f
        faults.append(
            {"at_s": f, "device": dev, "type": "off_bus", "duration_s": duration_s - f + 1}
        )
        if rng.uniform() < P_SUDDEN:
            continue
        lead_s = min(rng.uniform(*LEAD_MIN) * 60.0, f - 60.0)
        n_ep = int(rng.integers(CHAIN_EPISODES[0], CHAIN_EPISODES[1] + 1))
        for at in np.sort(rng.uniform(f - lead_s, f - 30.0, n_ep)):
            for kind in CHAIN_KINDS[int(rng.choice(len(CHAIN_KINDS), p=CHAIN_P))]:
                episode(dev, float(at), kind)
    return faults, fail_s


def trace_scenario(seed: int, duration_s: float, n_devices: int | None) -> tuple[Scenario, Any]:
    """One trace's scenario and failure onsets (seconds from start; inf = does not fail)."""
    base = generate(seed, duration_s=duration_s, n_devices=n_devices)
    doc = to_json_dict(base)
    faults, fail_s = fault_schedule(np.random.default_rng([seed, 5]), base.device_ids, duration_s)
    doc["name"] = f"fault-trace-{seed}"
    doc["faults"] = faults
    return parse_scenario(doc), fail_s


@dataclass
class Traces:
    """Sampled rows of many traces (every ``stride`` ticks), devices concatenated.

    ``features``: ``(samples, devices, n_features)``; ``rules``: rules-only risk
    ``(samples, devices)``; ``fatal``: the known-fatal rules the model is combined with;
    ``t_s``: sample times; ``fail_s`` per device; ``trace`` per device.
    """

    t_s: np.ndarray
    features: np.ndarray
    rules: np.ndarray
    fatal: np.ndarray
    fail_s: np.ndarray
    trace: np.ndarray
    duration_s: float

    def labels(self, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
        """``(y, valid)`` of shape ``(samples, devices)`` (see the module docstring)."""
        t = self.t_s[:, None]
        valid = t < self.fail_s[None, :]
        y = valid & (self.fail_s[None, :] <= t + horizon_s)
        return y, valid


def run_traces(spec: TraceSpec, *, stride: int = 5) -> Traces:
    """Simulate every trace of ``spec`` in lock-step (one :class:`FailureRisk` for all)."""
    fleets: list[SimFleet] = []
    fails: list[np.ndarray] = []
    ids: list[str] = []
    hosts: list[str] = []
    trace: list[int] = []
    for k, seed in enumerate(spec.seeds):
        sc, f = trace_scenario(seed, spec.duration_s, spec.n_devices)
        fleets.append(SimFleet(sc))
        fails.append(f)
        ids += [f"t{seed}|{d}" for d in sc.device_ids]
        hosts += [f"t{seed}|{host_of(d)}" for d in sc.device_ids]
        trace += [k] * len(sc.device_ids)
    n = len(ids)
    fr = FailureRisk([], model=None)
    fr.add_hosts((h, [d]) for d, h in zip(ids, hosts, strict=True))
    rows = np.arange(n)
    bounds = np.cumsum([0, *[len(fl.sim.device_ids) for fl in fleets]])
    tick_s = fleets[0].scenario.tick_s
    n_ticks = round(spec.duration_s / tick_s)
    n_int = np.ones(n, np.int64)
    interval = np.full(n, tick_s)
    temp, mask, ecc, reporting = (np.empty(n) for _ in range(4))
    out_t, out_x, out_r, out_f = [], [], [], []
    for k in range(n_ticks):
        xid_code = np.zeros(n, np.int64)
        for j, fl in enumerate(fleets):
            tel = fl.advance().telemetry
            a, b = bounds[j], bounds[j + 1]
            temp[a:b] = tel.temp_c
            mask[a:b] = tel.throttle_reasons_mask
            ecc[a:b] = tel.ecc_corrected_total
            reporting[a:b] = tel.reporting
            for i in fl.new_xids:  # what SimBackend.read emits as XID 79 events
                xid_code[a + i] = XID_OFF_BUS
        events = EventArrays(
            xid_code,
            np.where(xid_code > 0, XID_WEIGHTS[XID_OFF_BUS], 0.0),
            np.zeros(n),
            np.zeros(n, np.int64),
            np.zeros(n),
        )
        cols = {"temp_c": temp, "throttle_reasons_mask": mask, "ecc_corrected_total": ecc}
        fr.update_rows(rows, cols, reporting.astype(bool), events, n_int, interval)
        if k % stride == 0:
            out_t.append(k * tick_s)
            out_x.append(fr.features.features().astype(np.float32))
            out_r.append(fr.rules_risk().astype(np.float32))
            out_f.append(fr.rules_risk(fatal_only=True).astype(np.float32))
    return Traces(
        t_s=np.array(out_t),
        features=np.stack(out_x),
        rules=np.stack(out_r),
        fatal=np.stack(out_f),
        fail_s=np.concatenate(fails),
        trace=np.array(trace),
        duration_s=spec.duration_s,
    )
