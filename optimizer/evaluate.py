"""Run policies on one scenario and seed, and report (spec: "Policies and the report").

Example (about 15 s)::

    report = evaluate("optimizer/scenarios/two-phase-8gpu.json")
    print(report.to_text())
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.learned import LearnedPolicy
from accelpilot.optimizer.oracle import OraclePolicy
from accelpilot.optimizer.policy import MaxPolicy, Policy, StaticPolicy
from accelpilot.optimizer.profile import ProfilePolicy
from accelpilot.optimizer.scenario import Scenario, load_scenario
from accelpilot.optimizer.simulator import Controls, FleetSimulator

POLICY_NAMES = ("max", "static", "profile", "oracle", "learned")


def make_policy(name: str, scenario: Scenario) -> Policy:
    facts = FleetFacts.from_scenario(scenario)
    if name == "max":
        return MaxPolicy(facts)
    if name == "static":
        return StaticPolicy(facts)
    if name == "profile":
        return ProfilePolicy(facts)
    if name == "oracle":
        return OraclePolicy(scenario)
    if name == "learned":
        return LearnedPolicy(facts)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    energy_j: float
    work_units: float
    j_per_unit: float
    slo_violation_fraction: float
    actions: int
    savings_vs_oracle: float | None
    wall_s: float


@dataclass(frozen=True, slots=True)
class Report:
    scenario: str
    seed: int
    ticks: int
    results: list[PolicyResult]
    oracle_method: str | None
    wall_s: float
    notes: dict[str, str] = field(default_factory=dict)

    def by_policy(self) -> dict[str, PolicyResult]:
        return {r.policy: r for r in self.results}

    def to_json(self) -> str:
        def clean(v: object) -> object:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        d = asdict(self)
        d["results"] = [{k: clean(v) for k, v in r.items()} for r in d["results"]]
        return json.dumps(d, indent=2)

    def to_text(self) -> str:
        head = (
            f"scenario {self.scenario}  seed {self.seed}  ticks {self.ticks}  "
            f"oracle method {self.oracle_method or '-'}  wall {self.wall_s:.1f} s"
        )
        cols = (
            f"{'policy':<9}{'energy_j':>14}{'work_units':>14}{'j_per_unit':>11}"
            f"{'slo_viol':>10}{'actions':>9}{'savings':>9}{'wall_s':>8}"
        )
        lines = [head, cols]
        for r in self.results:
            sv = "-" if r.savings_vs_oracle is None else f"{r.savings_vs_oracle:.3f}"
            lines.append(
                f"{r.policy:<9}{r.energy_j:>14.4g}{r.work_units:>14.4g}{r.j_per_unit:>11.5f}"
                f"{r.slo_violation_fraction:>10.4f}{r.actions:>9d}{sv:>9}{r.wall_s:>8.2f}"
            )
        return "\n".join(lines)


class _ActionCounter:
    """Control changes: per tick, devices whose cap or standby changed plus streams whose
    (normalized) weights changed."""

    def __init__(self, facts: FleetFacts) -> None:
        self.f = facts
        self.caps = facts.tdp_w.copy()
        self.weights = facts.even_weights.copy()
        self.standby = np.zeros(facts.n_devices, dtype=bool)
        self.count = 0

    def add(self, c: Controls) -> None:
        f = self.f
        caps = f.tdp_w if c.caps_w is None else np.asarray(c.caps_w, dtype=float)
        if c.weights is None:
            w = f.even_weights
        else:
            w = np.asarray(c.weights, dtype=float)
            s = w.sum(axis=1, keepdims=True)
            w = np.divide(w, s, out=np.zeros_like(w), where=s > 0)
        sb = np.zeros(f.n_devices, dtype=bool) if c.standby is None else np.asarray(c.standby)
        self.count += int((np.abs(caps - self.caps) > 1e-6 * f.tdp_w).sum())
        self.count += int((sb != self.standby).sum())
        self.count += int((np.abs(w - self.weights) > 1e-9).any(axis=1).sum())
        self.caps, self.weights, self.standby = caps, w, sb


def run_policy(scenario: Scenario, policy: Policy, seed: int | None = None) -> tuple[object, int]:
    """Run one policy to the end; returns ``(Totals, actions)``."""
    sim = FleetSimulator(scenario, seed=seed)
    facts = FleetFacts.from_scenario(scenario)
    counter = _ActionCounter(facts)
    tel = None
    n = scenario.n_ticks
    for k0 in range(0, n, 1024):
        win = sim.timeline.window(k0, min(1024, n - k0))
        for i in range(win.n):
            truth = win.conditions(i) if policy.privileged else None
            obs = Observation(k0 + i, facts, win.demand_rate[i], tel, truth)
            c = policy.decide(obs)
            counter.add(c)
            tel = sim.step(c.caps_w, c.weights, c.standby).telemetry
    return sim.totals(), counter.count


def evaluate(
    scenario_path: str | Path | Scenario,
    policies: Sequence[str] = POLICY_NAMES,
    seed: int | None = None,
) -> Report:
    """Run every named policy on the same scenario and seed and build the report."""
    sc = scenario_path if isinstance(scenario_path, Scenario) else load_scenario(scenario_path)
    seed_used = sc.seed if seed is None else seed
    t_all = time.perf_counter()
    raw = {}
    oracle_method = None
    for name in policies:
        t0 = time.perf_counter()
        pol = make_policy(name, sc)
        totals, actions = run_policy(sc, pol, seed_used)
        raw[name] = (totals, actions, time.perf_counter() - t0)
        if isinstance(pol, OraclePolicy):
            oracle_method = "+".join(sorted(pol.methods)) or None
    jpu = {k: v[0].joules_per_unit for k, v in raw.items()}  # type: ignore[attr-defined]
    results = []
    for name, (totals, actions, wall) in raw.items():
        sv = None
        if "max" in jpu and "oracle" in jpu:
            den = jpu["max"] - jpu["oracle"]
            sv = (jpu["max"] - jpu[name]) / den if den > 0 else None
        results.append(
            PolicyResult(
                policy=name,
                energy_j=totals.total_energy_j,  # type: ignore[attr-defined]
                work_units=totals.total_work,  # type: ignore[attr-defined]
                j_per_unit=jpu[name],
                slo_violation_fraction=totals.slo_violation_fraction,  # type: ignore[attr-defined]
                actions=actions,
                savings_vs_oracle=sv,
                wall_s=wall,
            )
        )
    return Report(
        scenario=sc.name,
        seed=seed_used,
        ticks=sc.n_ticks,
        results=results,
        oracle_method=oracle_method,
        wall_s=time.perf_counter() - t_all,
    )


def evaluate_cli(
    scenario: Path,
    policies: str = ",".join(POLICY_NAMES),
    as_json: bool = False,
    seed: int | None = None,
) -> str:
    """What ``accelpilot optimizer evaluate`` prints."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    report = evaluate(scenario, names, seed)
    return report.to_json() if as_json else report.to_text()
