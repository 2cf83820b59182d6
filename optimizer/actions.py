"""Controls → fleet actions: the one conversion shared by the embedded demo and the live optimizer.

A policy's :class:`~accelpilot.optimizer.simulator.Controls` is compared with what the devices
hold (or were last commanded to hold) and turned into per-host intents:

- ``set_power_cap`` for every device whose cap moves by at least ``cap_step_w`` (1 W);
- ``park`` / ``wake`` for every device whose standby state changes;
- ``set_load_weights`` per (stream, host) whose normalized weights changed by more than
  ``weight_atol``: one action per host carrying that host's members of the stream.

:class:`ActionSigner` then makes them signed :class:`~accelpilot.schemas.actions.Action` s with a
per-host ``seq`` that keeps increasing across restarts: ``seq = max(previous + 1, wall-clock µs)``
(time-derived, nothing persisted; a restarted optimizer starts above every seq it issued before,
as long as it never issued more than one action per µs per host, and the clock does not step
back by more than the downtime).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from accelpilot.collectors.device import host_of
from accelpilot.optimizer.facts import FleetFacts
from accelpilot.optimizer.simulator import Controls
from accelpilot.schemas.actions import Action, ActionKind, ActionMode
from accelpilot.signing import Signer

Array = NDArray[np.float64]

CAP_STEP_W = 1.0  # smaller cap changes are not worth an action
WEIGHT_ATOL = 1e-3
ACTION_LIFETIME_S = 60.0


@dataclass(frozen=True, slots=True)
class Intent:
    """One unsigned action: what to do on which host (``device`` / ``stream`` are indices)."""

    host_id: str
    kind: ActionKind
    device: int | None = None
    device_id: str | None = None
    cap_w: float | None = None
    stream: int | None = None
    stream_id: str | None = None
    weights: dict[str, float] | None = None


def controls_to_intents(
    facts: FleetFacts,
    controls: Controls,
    *,
    caps_w: Array,
    standby: NDArray[np.bool_],
    weights: Array,
    host_of: Callable[[str], str] = host_of,
    cap_step_w: float = CAP_STEP_W,
    weight_atol: float = WEIGHT_ATOL,
    skip: Callable[[int], bool] = lambda d: False,
) -> list[Intent]:
    """Intents that move the fleet from (``caps_w``, ``standby``, ``weights``) — what the devices
    hold — to ``controls``. ``skip(d)`` drops device ``d`` (e.g. not controllable right now)."""
    ids = facts.device_ids
    out: list[Intent] = []
    if controls.caps_w is not None:
        caps = np.asarray(controls.caps_w, dtype=float)
        for i in np.flatnonzero(np.abs(caps - caps_w) >= cap_step_w):
            if not skip(int(i)):
                out.append(
                    Intent(host_of(ids[i]), "set_power_cap", int(i), ids[i], cap_w=float(caps[i]))
                )
    if controls.standby is not None:
        park = np.asarray(controls.standby, dtype=bool)
        for i in np.flatnonzero(park != standby):
            if not skip(int(i)):
                out.append(Intent(host_of(ids[i]), "park" if park[i] else "wake", int(i), ids[i]))
    if controls.weights is not None:
        w = np.asarray(controls.weights, dtype=float)
        for s in range(facts.n_streams):
            row, total = w[s], w[s].sum()
            ref = weights[s] / max(weights[s].sum(), 1e-300)
            if total <= 0 or np.allclose(row / total, ref, atol=weight_atol):
                continue
            row = row / total
            by_host: dict[str, dict[str, float]] = {}
            for d in np.flatnonzero(facts.membership[s]):
                by_host.setdefault(host_of(ids[d]), {})[ids[d]] = float(row[d])
            for h, mine in sorted(by_host.items()):
                out.append(
                    Intent(
                        h, "set_load_weights", stream=s, stream_id=facts.stream_ids[s], weights=mine
                    )
                )
    return out


@dataclass
class ActionSigner:
    """Signs intents as actions; ``seq`` per host = ``max(previous + 1, wall-clock µs)``."""

    signer: Signer
    issuer: str
    lifetime_s: float = ACTION_LIFETIME_S
    clock_ns: Callable[[], int] = time.time_ns
    _seq: dict[str, int] = field(default_factory=dict)

    def next_seq(self, host_id: str) -> int:
        seq = max(self._seq.get(host_id, 0) + 1, self.clock_ns() // 1000)
        self._seq[host_id] = seq
        return seq

    def sign(self, intent: Intent, *, mode: ActionMode = "auto", reason: str = "") -> Action:
        seq = self.next_seq(intent.host_id)
        now = self.clock_ns()
        action = Action(
            action_id=f"{self.issuer}-{intent.host_id}-{seq}",
            host_id=intent.host_id,
            seq=seq,
            kind=intent.kind,
            device_id=intent.device_id,
            cap_w=intent.cap_w,
            stream_id=intent.stream_id,
            weights=intent.weights,
            issued_ts_ns=now,
            expires_ts_ns=now + round(self.lifetime_s * 1e9),
            issuer=self.issuer,
            mode=mode,
            reason=reason,
            key_id=self.signer.key_id,
        )
        return self.signer.sign(action)

    def sign_all(self, intents: Sequence[Intent], *, mode: ActionMode = "auto") -> list[Action]:
        return [self.sign(i, mode=mode) for i in intents]
