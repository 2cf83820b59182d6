"""The optimizer in advise mode: its decisions become recommendations an operator accepts or
dismisses.

Every tick the policy's :class:`~accelpilot.optimizer.simulator.Controls` are turned into
intents by the same conversion as in auto mode (``optimizer/actions.py``); each intent is one
recommendation, identified by *what* it changes (kind, host, device or stream), so a
recommendation keeps its id while the policy keeps proposing it and its target is refreshed every
tick. A recommendation the policy stops proposing disappears. Accepting one applies its current
intent through the signed path (the caller does that); dismissing one hides it until its target
moves materially (``DISMISS_CAP_W`` / ``DISMISS_WEIGHT``), i.e. until the policy has something
new to say about it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from accelpilot.console.errors import NotFoundError
from accelpilot.optimizer.actions import Intent

DISMISS_CAP_W = 10.0
DISMISS_WEIGHT = 0.05


@dataclass(frozen=True, slots=True)
class Savings:
    """Expected effect of a recommendation: ``power_w`` saved (negative = costs power) and how
    that number was obtained; ``None`` when it cannot be estimated."""

    power_w: float | None
    basis: str


@dataclass
class Recommendation:
    id: str
    intent: Intent
    savings: Savings
    first_tick: int
    updated_tick: int

    def to_dict(self) -> dict[str, object]:
        it = self.intent
        return {
            "id": self.id,
            "kind": it.kind,
            "host_id": it.host_id,
            "device_id": it.device_id,
            "stream_id": it.stream_id,
            "cap_w": it.cap_w,
            "weights": it.weights,
            "expected_savings_w": self.savings.power_w,
            "basis": self.savings.basis,
            "first_tick": self.first_tick,
            "updated_tick": self.updated_tick,
        }


def recommendation_key(it: Intent) -> str:
    target = it.device_id if it.device_id is not None else it.stream_id
    group = "standby" if it.kind in ("park", "wake") else it.kind
    raw = f"{group}|{it.host_id}|{target}"
    return "rec-" + hashlib.sha256(raw.encode()).hexdigest()[:12]


def _moved(a: Intent, b: Intent) -> bool:
    """Whether ``b`` asks for something materially different from ``a``."""
    if a.kind != b.kind:
        return True
    if a.cap_w is not None and b.cap_w is not None:
        return bool(abs(a.cap_w - b.cap_w) >= DISMISS_CAP_W)
    if a.weights is not None and b.weights is not None:
        keys = set(a.weights) | set(b.weights)
        return any(
            abs(a.weights.get(k, 0.0) - b.weights.get(k, 0.0)) >= DISMISS_WEIGHT for k in keys
        )
    return False


class Advisor:
    """The open recommendations and the dismissed ones (see the module docstring)."""

    def __init__(self) -> None:
        self.open: dict[str, Recommendation] = {}
        self.dismissed: dict[str, Intent] = {}
        self.accepted_total = 0
        self.dismissed_total = 0

    def update(
        self, intents: list[Intent], tick: int, savings: Callable[[Intent], Savings]
    ) -> None:
        """Replace the open set with this tick's proposals."""
        fresh: dict[str, Recommendation] = {}
        for it in intents:
            rid = recommendation_key(it)
            gone = self.dismissed.get(rid)
            if gone is not None:
                if not _moved(gone, it):
                    continue
                del self.dismissed[rid]
            old = self.open.get(rid)
            first = old.first_tick if old is not None else tick
            fresh[rid] = Recommendation(rid, it, savings(it), first, tick)
        self.open = fresh

    def clear(self) -> None:
        self.open = {}

    def get(self, rec_id: str) -> Recommendation:
        rec = self.open.get(rec_id)
        if rec is None:
            raise NotFoundError(
                f"recommendation {rec_id!r} is not open (the optimizer no longer proposes it, or "
                "it was accepted or dismissed); reload the list"
            )
        return rec

    def accepted(self, rec_id: str) -> Recommendation:
        rec = self.get(rec_id)
        del self.open[rec_id]
        self.accepted_total += 1
        return rec

    def dismiss(self, rec_id: str) -> Recommendation:
        rec = self.get(rec_id)
        del self.open[rec_id]
        self.dismissed[rec_id] = rec.intent
        self.dismissed_total += 1
        return rec
