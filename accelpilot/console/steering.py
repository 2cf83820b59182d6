"""Steering over the real pipeline: the console's sliders as signed actions on ``fleet.actions``.

`accelpilot console --key K --scenario F` builds one :class:`PipelineSteering`. A slider request
is checked against the fleet description (:mod:`accelpilot.console.controls`: the same rules as
the demo's), turned into :class:`~accelpilot.optimizer.simulator.Controls`, converted by the
optimizer's own ``controls_to_intents`` and signed by its ``ActionSigner``
(``optimizer/actions.py``) with issuer ``operator:<name>`` and ``mode="manual"``, then
published to ``fleet.actions`` keyed by host, exactly as ``accelpilot optimizer run``
publishes its own. The agents verify and apply them; their results come back through
``fleet.action-results`` -> the worker -> InfluxDB's ``action_result`` measurement, which the
audit reads.

Device limits and stream membership come from the fleet description, as for
``optimizer run``: the samples carry the enforced cap (``cap_w``) but not the device's
min/max limits, and discovery data does not leave the host. A request outside a device's
``[min_cap_w, tdp_w]`` is refused (422) before anything is signed.

What the console does not know for sure is what each device holds right now (the newest
sample is up to a sampling interval old, and an action may be in flight), so every device a
request names gets its action; an actuator answers ``unchanged`` when it already holds the cap.
Likewise a stream's current load weights are not in InfluxDB: a load request always sends the
stream's new distribution to each of its hosts.

Sequence numbers: one ``seq`` state (per host) is shared by every operator of this console,
and signing and publishing hold one lock, so this console's actions reach each host's
partition in ``seq`` order. A separate ``optimizer run`` process signs with its own
time-derived ``seq`` (wall-clock µs); two actions for one host signed within a publishing
round-trip of each other by the two processes may arrive out of order, and the agent then
rejects the older one as ``replayed-seq`` (visible in the audit).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np

from accelpilot.collectors.device import host_of
from accelpilot.console.controls import requested_caps, requested_weights, resolve_devices
from accelpilot.console.errors import ConsoleRequestError, NotFoundError
from accelpilot.errors import ServiceUnavailableError
from accelpilot.optimizer.actions import (
    ACTION_LIFETIME_S,
    ActionSigner,
    Intent,
    controls_to_intents,
)
from accelpilot.optimizer.facts import FleetFacts
from accelpilot.optimizer.simulator import Controls
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.signing import Signer

PUBLISHED_KEPT = 2000  # actions this console remembers for the audit (issuer, reason, signed)


class PublishError(ConsoleRequestError):
    """Kafka did not acknowledge the actions."""

    status = 503


class ActionPublisher(Protocol):
    def publish(self, actions: Sequence[Action]) -> None:
        """Deliver every action (key = host id) or raise :class:`PublishError`."""


class KafkaActionPublisher:
    """``fleet.actions`` producer: acks=all, idempotent; ``publish`` waits for every
    acknowledgement, so a 2xx answer means the broker holds the actions."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id="accelpilot-console",
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
            )
        except KafkaError as e:
            raise ServiceUnavailableError.kafka(bootstrap_servers, e) from e
        self.topic = topic
        self.timeout_s = timeout_s

    def publish(self, actions: Sequence[Action]) -> None:
        from kafka.errors import KafkaError

        try:
            futures = [
                self._producer.send(self.topic, key=a.host_id.encode(), value=codec.encode(a))
                for a in actions
            ]
            for f in futures:
                f.get(timeout=self.timeout_s)
        except KafkaError as e:
            raise PublishError(
                f"Kafka did not acknowledge the action(s) on {self.topic}: {e!r}; "
                "nothing was applied by this request's unacknowledged actions"
            ) from e

    def close(self) -> None:
        self._producer.close(timeout=5)


def _described(a: Action) -> dict[str, Any]:
    """The audit's fields of one action, as the console signed it."""
    return {
        "action_id": a.action_id,
        "host_id": a.host_id,
        "device_id": a.device_id,
        "kind": a.kind,
        "issuer": a.issuer,
        "mode": a.mode,
        "reason": a.reason,
        "cap_w": a.cap_w,
        "stream_id": a.stream_id,
        "weights": a.weights,
        "signed": bool(a.signature),
        "key_id": a.key_id,
    }


class PipelineSteering:
    """The console's operator controls over Kafka (see the module docstring)."""

    def __init__(
        self,
        facts: FleetFacts,
        signer: Signer,
        publisher: ActionPublisher,
        *,
        topic: str,
        fleet_name: str = "",
        lifetime_s: float = ACTION_LIFETIME_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.facts = facts
        self.publisher = publisher
        self.topic = topic
        self.fleet_name = fleet_name
        self.key_id = signer.key_id
        self.lifetime_s = lifetime_s
        self._signer = signer
        self._clock_ns = clock_ns
        self._seq: dict[str, int] = {}  # shared by every operator's ActionSigner
        self._signers: dict[str, ActionSigner] = {}
        self._lock = threading.Lock()
        self.hosts: dict[str, list[int]] = {}
        for i, d in enumerate(facts.device_ids):
            self.hosts.setdefault(host_of(d), []).append(i)
        self.published: deque[Action] = deque(maxlen=PUBLISHED_KEPT)

    # -- what the fleet description says ---------------------------------------------------------
    def device(self, device_id: str) -> dict[str, Any] | None:
        """Limits and streams of a device in the fleet description (``None``: not in it)."""
        f = self.facts
        try:
            i = f.device_ids.index(device_id)
        except ValueError:
            return None
        return {
            "min_cap_w": float(f.min_cap_w[i]),
            "tdp_w": float(f.tdp_w[i]),
            "streams": [f.stream_ids[s] for s in np.flatnonzero(f.membership[:, i]).tolist()],
        }

    def streams(self) -> list[dict[str, Any]]:
        """Each stream's devices with even shares: the current weights are not in InfluxDB."""
        f = self.facts
        out = []
        for s, sid in enumerate(f.stream_ids):
            members = np.flatnonzero(f.membership[s]).tolist()
            out.append(
                {
                    "stream_id": sid,
                    "pinned": False,
                    "weights_known": False,
                    "weights": {f.device_ids[d]: 1.0 / len(members) for d in members},
                }
            )
        return out

    def describe(self) -> dict[str, Any]:
        f = self.facts
        return {
            "topic": self.topic,
            "key_id": self.key_id,
            "fleet": self.fleet_name,
            "hosts": sorted(self.hosts),
            "devices": f.n_devices,
            "lifetime_s": self.lifetime_s,
            "published": len(self.published),
        }

    # -- requests --------------------------------------------------------------------------------
    def resolve_devices(
        self,
        device_ids: list[str] | None = None,
        host_id: str | None = None,
        stream_id: str | None = None,
    ) -> list[int]:
        if device_ids:
            unknown = [d for d in device_ids if d not in self.facts.device_ids]
            if unknown:
                raise NotFoundError(
                    f"device(s) {unknown} are not in the fleet description"
                    f"{f' ({self.fleet_name})' if self.fleet_name else ''}: the console knows no "
                    "power limits for them and sends them nothing"
                )
        return resolve_devices(self.facts, self.hosts, device_ids, host_id, stream_id)

    def set_caps(
        self,
        who: str,
        idx: list[int],
        *,
        cap_w: float | None = None,
        fraction_of_tdp: float | None = None,
    ) -> list[Action]:
        """One signed ``set_power_cap`` per device of ``idx`` (checked against its limits)."""
        f = self.facts
        caps, what = requested_caps(f, f.tdp_w, idx, cap_w=cap_w, fraction_of_tdp=fraction_of_tdp)
        # What the named devices hold is not known for sure (see the module docstring): an
        # unknown held cap (-inf) makes the conversion emit an action for each of them; the
        # others "hold" exactly what the controls ask, so they get none.
        held = caps.copy()
        held[idx] = -np.inf
        intents = controls_to_intents(
            f,
            Controls(caps_w=caps),
            caps_w=held,
            standby=np.zeros(f.n_devices, dtype=bool),
            weights=f.even_weights,
        )
        return self._publish(who, intents, f"power cap slider: {what}")

    def set_weights(self, who: str, stream_id: str, shares: dict[str, float]) -> list[Action]:
        """One signed ``set_load_weights`` per host of the stream (devices not named get 0)."""
        f = self.facts
        unknown = np.zeros((f.n_streams, f.n_devices))
        weights, _ = requested_weights(f, unknown, stream_id, shares)
        # Reference weights all 0: the stream's current distribution is not known, so its new
        # one is always sent; the other streams' rows are 0 too, so they get nothing.
        intents = controls_to_intents(
            f,
            Controls(weights=weights),
            caps_w=f.tdp_w,
            standby=np.zeros(f.n_devices, dtype=bool),
            weights=unknown,
        )
        return self._publish(who, intents, f"load distribution slider: {stream_id}")

    def _publish(self, who: str, intents: list[Intent], reason: str) -> list[Action]:
        issuer = f"operator:{who}"
        with self._lock:
            signer = self._signers.get(issuer)
            if signer is None:
                signer = self._signers[issuer] = ActionSigner(
                    self._signer,
                    issuer,
                    lifetime_s=self.lifetime_s,
                    clock_ns=self._clock_ns,
                    _seq=self._seq,
                )
            actions = [signer.sign(it, mode="manual", reason=reason) for it in intents]
            self.publisher.publish(actions)
            self.published.extend(actions)
        return actions

    # -- the audit -------------------------------------------------------------------------------
    def annotate(self, rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
        """InfluxDB's action rows (results grouped by action) completed with what this console
        signed (issuer, mode, reason, signed, key id) and, as rows without results ("pending"),
        its published actions that have no result in InfluxDB yet. Newest first."""
        with self._lock:
            mine = {a.action_id: a for a in self.published}
        out = []
        seen = set()
        for r in rows:
            a = mine.get(r["action_id"])
            if a is not None:
                seen.add(a.action_id)
                r = {**r, **_described(a), "host_id": r["host_id"]}
            out.append(r)
        # Older than every row: its result may simply lie beyond ``limit``.
        oldest = min((r["ts_ns"] for r in rows), default=None) if len(rows) >= limit else None
        for a in mine.values():
            if a.action_id not in seen and (oldest is None or a.issued_ts_ns >= oldest):
                out.append({**_described(a), "ts_ns": a.issued_ts_ns, "results": []})
        out.sort(key=lambda r: -int(r["ts_ns"]))
        return out[:limit]


def action_dict(a: Action) -> dict[str, Any]:
    """An action as JSON (the signature base64, as msgspec encodes bytes)."""
    out: dict[str, Any] = msgspec.to_builtins(a)
    return out
