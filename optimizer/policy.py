"""The policy interface and the two fixed baselines of the spec.

A policy turns an :class:`~accelpilot.optimizer.facts.Observation` (previous tick's telemetry
plus the static facts) into the next tick's :class:`~accelpilot.optimizer.simulator.Controls`.
Policies are stateful objects built for one fleet (``FleetFacts``) and run once.

>>> from accelpilot.optimizer.scenario import load_bundled_scenario
>>> facts = FleetFacts.from_scenario(load_bundled_scenario("two-phase-8gpu"))
>>> [round(c, 6) for c in StaticPolicy(facts).caps_w.tolist()[:2]]
[490.0, 490.0]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.simulator import Controls

STATIC_FRACTION_OF_TDP = 0.70


@runtime_checkable
class Policy(Protocol):
    """``decide(observation) -> Controls``; ``privileged`` policies also get the truth."""

    name: str
    privileged: bool

    def decide(self, obs: Observation) -> Controls: ...


class MaxPolicy:
    """Spec baseline ``max``: every cap at ``tdp_w``, even weights, nobody parked."""

    name = "max"
    privileged = False

    def __init__(self, facts: FleetFacts) -> None:
        self._controls = Controls(
            caps_w=facts.tdp_w.copy(), weights=facts.even_weights, standby=None
        )

    def decide(self, obs: Observation) -> Controls:
        return self._controls


class StaticPolicy:
    """Spec baseline ``static``: every cap at 70% of ``tdp_w`` (clipped into
    ``[min_cap_w, tdp_w]``), even weights, nobody parked."""

    name = "static"
    privileged = False

    def __init__(self, facts: FleetFacts, fraction: float = STATIC_FRACTION_OF_TDP) -> None:
        self.caps_w = np.clip(fraction * facts.tdp_w, facts.min_cap_w, facts.tdp_w)
        self._controls = Controls(caps_w=self.caps_w, weights=facts.even_weights, standby=None)

    def decide(self, obs: Observation) -> Controls:
        return self._controls
