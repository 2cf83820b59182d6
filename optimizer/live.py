"""`accelpilot optimizer run`: the learned policy on the live fleet, through Kafka.

Inputs
    ``telemetry.aggregates`` (scope ``device``, the worker's shortest window, 10 s by default):
    one :class:`~accelpilot.optimizer.telemetry.DeviceTelemetry` per window, mapped as
    ``power_w ← power_w.mean``, ``util_pct ← util_compute_pct.mean``, ``cap_w ← cap_w.last``,
    ``work_rate ← work_rate.mean``, ``temp_c ← temp_c.mean``, ``ecc_corrected_total ←
    ecc_corrected_total.last``, ``throttle_reasons_mask ← throttle_reasons_mask.max`` (any throttle
    in the window); a device with no aggregate (or no ``power_w``) in the window is not reporting.
    XID events are not in aggregates: they arrive as anomalies/alerts instead.
    ``telemetry.anomalies`` and ``fleet.alerts``: a device with an anomaly score ≥
    ``anomaly_threshold`` in the last ``anomaly_hold_s``, or a firing alert (warning or
    critical), is reverted at once to its default cap (``tdp_w``) and given no load.
    ``fleet.action-results``: outcomes are counted; a ``rejected`` or ``failed`` action makes its
    device (or, for load weights, its host) *not controllable* for ``backoff_s`` (doubling on
    repeats, at most ``backoff_max_s``): no action is sent to it meanwhile.

Fleet description
    Device limits (idle/tdp/min cap/peak rate/standby/wake) and stream membership come from a
    fleet scenario file (the sim fleet), optionally restricted to some hosts. A real deployment
    supplies the same facts from inventory: the agents' discovery (``DeviceInfo`` power limits)
    and the workload scheduler's stream membership. Demand is not in telemetry: it is estimated
    per stream as the work its devices delivered in the window, held (never lowered) while one of
    them is saturated (busy ≥ ``saturated_pct``), since a saturated stream may be asking for more.

Outputs
    Every decision goes through the learned policy's safety envelope, then
    :func:`~accelpilot.optimizer.actions.controls_to_intents` (the demo's conversion), then is
    signed (Ed25519; only this process holds the private key) with a per-host, restart-safe
    ``seq`` and a ``lifetime_s`` expiry, issuer ``optimizer:learned``. ``auto``: published to
    ``fleet.actions`` keyed by host. ``advise``: never published to ``fleet.actions``; each
    recommendation (the signed Action with ``mode="advise"``, its ``reason`` holding the expected
    savings in W and J/unit from the policy's own fitted model) is appended as one JSON line
    (``codec.encode``) to the recommendations file.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from accelpilot.collectors.device import host_of
from accelpilot.optimizer.actions import ActionSigner, Intent, controls_to_intents
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.learned import LearnedPolicy
from accelpilot.optimizer.scenario import Scenario
from accelpilot.optimizer.simulator import Controls
from accelpilot.optimizer.telemetry import DeviceTelemetry
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.signing import Signer

log = logging.getLogger(__name__)

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]
Mode = Literal["advise", "auto"]
ISSUER = "optimizer:learned"

# DeviceTelemetry field <- (aggregate metric, statistic)
AGGREGATE_MAPPING: dict[str, tuple[str, str]] = {
    "power_w": ("power_w", "mean"),
    "util_pct": ("util_compute_pct", "mean"),
    "temp_c": ("temp_c", "mean"),
    "cap_w": ("cap_w", "last"),
    "work_rate": ("work_rate", "mean"),
    "ecc_corrected_total": ("ecc_corrected_total", "last"),
    "throttle_reasons_mask": ("throttle_reasons_mask", "max"),
}


def facts_for_hosts(
    scenario: Scenario, hosts: Iterable[str] | None = None, *, window_s: float | None = None
) -> FleetFacts:
    """The fleet's facts, restricted to ``hosts`` (streams keep their members on those hosts,
    streams left without members are dropped); ``tick_s`` becomes the decision window."""
    full = FleetFacts.from_scenario(scenario)
    chosen = None if hosts is None else set(hosts)
    keep = np.array([chosen is None or host_of(d) in chosen for d in full.device_ids], dtype=bool)
    member = full.membership[:, keep]
    streams = member.any(axis=1)
    return replace(
        full.with_devices(np.flatnonzero(keep), member[streams]),
        stream_ids=tuple(s for s, k in zip(full.stream_ids, streams, strict=True) if k),
        tick_s=full.tick_s if window_s is None else window_s,
    )


def telemetry_from_aggregates(
    facts: FleetFacts, aggregates: Mapping[str, Aggregate], tick: int
) -> DeviceTelemetry:
    """One window's device aggregates (by device id) as the policy's ``DeviceTelemetry``."""
    n = facts.n_devices
    cols = {name: np.full(n, np.nan) for name in AGGREGATE_MAPPING}
    reporting = np.zeros(n, dtype=bool)
    ts_ns = 0
    for i, d in enumerate(facts.device_ids):
        agg = aggregates.get(d)
        if agg is None or "power_w" not in agg.metrics:
            continue
        reporting[i] = True
        ts_ns = max(ts_ns, agg.window_end_ns)
        for name, (metric, stat) in AGGREGATE_MAPPING.items():
            st = agg.metrics.get(metric)
            if st is not None:
                cols[name][i] = float(getattr(st, stat))
    cols["throttle_reasons_mask"] = np.where(
        reporting, np.nan_to_num(cols["throttle_reasons_mask"], nan=0.0), np.nan
    )
    return DeviceTelemetry(
        tick=tick,
        ts_ns=ts_ns,
        device_ids=facts.device_ids,
        reporting=reporting,
        xid_total=np.where(reporting, 0.0, np.nan),
        **cols,
    )


def settled_devices(
    facts: FleetFacts, aggregates: Mapping[str, Aggregate], tolerance_w: float = 0.5
) -> Mask:
    """Devices whose cap did not move within the window (``cap_w`` min = max): only their
    window averages describe a single cap, so only they teach the policy's model."""
    out = np.zeros(facts.n_devices, dtype=bool)
    for i, d in enumerate(facts.device_ids):
        agg = aggregates.get(d)
        st = None if agg is None else agg.metrics.get("cap_w")
        out[i] = st is not None and st.max - st.min <= tolerance_w
    return out


# Alert kinds that do not make the optimizer revert a device (see LiveOptimizer.on_alert).
NO_REVERT_KINDS = frozenset({"anomaly"})


class DemandEstimator:
    """Per stream: the work delivered in the window, held while a member is saturated."""

    def __init__(self, facts: FleetFacts, saturated_pct: float = 97.0) -> None:
        self.facts = facts
        self.saturated_pct = saturated_pct
        self.demand: Array = np.zeros(facts.n_streams)

    def update(self, tel: DeviceTelemetry) -> Array:
        f = self.facts
        rate = np.where(tel.reporting, np.nan_to_num(tel.work_rate, nan=0.0), 0.0)
        busy = np.where(tel.reporting, np.nan_to_num(tel.util_pct, nan=0.0), 0.0)
        for s in range(f.n_streams):
            m = f.membership[s] & tel.reporting
            served = float(rate[m].sum())
            saturated = bool((busy[m] >= self.saturated_pct).any())
            self.demand[s] = max(self.demand[s], served) if saturated else served
        return self.demand.copy()


@dataclass
class Counters:
    windows: int = 0
    decisions: int = 0
    actions_sent: int = 0
    recommendations: int = 0
    anomaly_reverts: int = 0
    skipped_uncontrollable: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "outcomes"}
        d["outcomes"] = dict(self.outcomes)
        return d


@dataclass
class _Sent:
    host_id: str
    kind: str
    device: int | None


class LiveOptimizer:
    """The decision core of ``accelpilot optimizer run``, free of Kafka (:func:`run_optimizer`
    feeds it). Feed it with ``on_aggregate`` / ``on_anomaly`` / ``on_alert`` / ``on_result``;
    ``poll()`` decides on every complete window and returns ``(auto_actions, recommendations)``.
    """

    def __init__(
        self,
        facts: FleetFacts,
        signer: Signer,
        *,
        mode: Mode = "advise",
        policy: Any | None = None,
        window_s: float | None = None,
        window_grace_s: float = 3.0,
        anomaly_threshold: float = math.inf,
        anomaly_hold_s: float = 60.0,
        backoff_s: float = 300.0,
        backoff_max_s: float = 3600.0,
        lifetime_s: float = 60.0,
        clock_ns: Callable[[], int] = time.time_ns,
        host_of: Callable[[str], str] = host_of,
        weights_actuated: bool = False,
    ) -> None:
        if mode not in ("advise", "auto"):
            raise ValueError(f"mode must be 'advise' or 'auto', not {mode!r}")
        self.facts = facts
        self.mode: Mode = mode
        self.policy = (
            policy
            if policy is not None
            else LearnedPolicy(facts, weights_actuated=weights_actuated)
        )
        self.window_s = window_s
        self.window_grace_ns = round(window_grace_s * 1e9)
        self.anomaly_threshold = anomaly_threshold
        self.anomaly_hold_ns = round(anomaly_hold_s * 1e9)
        self.backoff_ns = round(backoff_s * 1e9)
        self.backoff_max_ns = round(backoff_max_s * 1e9)
        self.clock_ns = clock_ns
        self.host_of = host_of
        self.signer = ActionSigner(signer, ISSUER, lifetime_s=lifetime_s, clock_ns=clock_ns)
        self.counters = Counters()
        self.demand = DemandEstimator(facts)
        self._index = {d: i for i, d in enumerate(facts.device_ids)}
        n = facts.n_devices
        # What the devices hold: observed caps, overridden by caps commanded since that window.
        self.caps_w: Array = facts.tdp_w.copy()
        self.standby: Mask = np.zeros(n, dtype=bool)
        self.weights: Array = facts.even_weights.copy()
        self._commanded: dict[int, tuple[float, int]] = {}
        self._pending: dict[int, dict[str, Aggregate]] = {}  # window start -> device -> agg
        self._first_seen: dict[int, int] = {}
        self._done_until = -1
        self._tick = 0
        self._anomaly_until = np.zeros(n, dtype=np.int64)
        self._alerts_firing: dict[str, int] = {}  # alert id -> device index
        self._blocked_until: dict[tuple[str, int | None], int] = {}
        self._strikes: Counter[tuple[str, int | None]] = Counter()
        self._sent: dict[str, _Sent] = {}
        self._last_advice: dict[tuple[str, str, int | None], Any] = {}
        self.last_telemetry: DeviceTelemetry | None = None

    # -- inputs --------------------------------------------------------------------------------
    def on_aggregate(self, agg: Aggregate) -> None:
        if agg.scope != "device" or agg.key not in self._index:
            return
        if self.window_s is None:
            self.window_s = agg.window_s
        if not math.isclose(agg.window_s, self.window_s) or agg.window_start_ns <= self._done_until:
            return
        self._pending.setdefault(agg.window_start_ns, {})[agg.key] = agg
        self._first_seen.setdefault(agg.window_start_ns, self.clock_ns())

    def on_anomaly(self, a: AnomalyScore) -> None:
        i = self._index.get(a.device_id)
        if i is not None and a.score >= self.anomaly_threshold:
            self._anomaly_until[i] = max(
                self._anomaly_until[i], self.clock_ns() + self.anomaly_hold_ns
            )

    def on_alert(self, al: Alert) -> None:
        i = self._index.get(al.device_id or "")
        # Device-fault alerts revert; "anomaly" alerts (statistical surprise) do not: the
        # optimizer's own cap changes move power, which the detectors rightly find surprising.
        if i is None or al.severity == "info" or al.kind in NO_REVERT_KINDS:
            return
        if al.state == "firing":
            self._alerts_firing[al.id] = i
        else:
            self._alerts_firing.pop(al.id, None)

    def on_result(self, r: ActionResult) -> None:
        self.counters.outcomes[r.outcome] += 1
        sent = self._sent.get(r.action_id)
        if sent is None:
            return
        key = (sent.host_id, sent.device)
        if r.outcome in ("rejected", "failed"):
            self._strikes[key] += 1
            wait = min(self.backoff_ns * 2 ** (self._strikes[key] - 1), self.backoff_max_ns)
            self._blocked_until[key] = self.clock_ns() + wait
            if sent.device is not None:
                self._commanded.pop(sent.device, None)
            log.warning(
                "%s %s on %s: %s; not controllable for %.0f s",
                r.outcome,
                sent.kind,
                r.device_id or sent.host_id,
                r.reason,
                wait / 1e9,
            )
        elif r.outcome in ("applied", "unchanged"):
            self._strikes.pop(key, None)
            if sent.device is not None and r.new_cap_w is not None:
                self.caps_w[sent.device] = r.new_cap_w

    # -- state ---------------------------------------------------------------------------------
    def anomalous(self) -> Mask:
        now = self.clock_ns()
        out = self._anomaly_until > now
        for i in self._alerts_firing.values():
            out[i] = True
        return out

    def controllable(self, device: int | None, host_id: str) -> bool:
        now = self.clock_ns()
        return self._blocked_until.get((host_id, device), 0) <= now and (
            device is None or self._blocked_until.get((host_id, None), 0) <= now
        )

    @property
    def not_controllable(self) -> list[str]:
        now = self.clock_ns()
        return sorted(
            self.facts.device_ids[d] if d is not None else h
            for (h, d), t in self._blocked_until.items()
            if t > now
        )

    # -- deciding ------------------------------------------------------------------------------
    def poll(self) -> tuple[list[Action], list[Action]]:
        """Decide on every window that is complete (all devices in) or past its grace."""
        now = self.clock_ns()
        auto: list[Action] = []
        advice: list[Action] = []
        for start in sorted(self._pending):
            aggs = self._pending[start]
            later = any(s > start for s in self._pending)
            complete = len(aggs) == self.facts.n_devices
            age = now - self._first_seen[start]
            late = (later and age >= self.window_grace_ns) or age >= 3 * self.window_grace_ns
            if not (complete or late):
                break
            del self._pending[start]
            self._first_seen.pop(start, None)
            self._done_until = start
            a, r = self.step(aggs)
            auto += a
            advice += r
        return auto, advice

    def step(self, aggs: Mapping[str, Aggregate]) -> tuple[list[Action], list[Action]]:
        """One window: observe, decide, and turn the decision into signed actions."""
        self._tick += 1
        self.counters.windows += 1
        tel = telemetry_from_aggregates(self.facts, aggs, self._tick)
        self.last_telemetry = tel
        self._observe_caps(tel)
        demand = self.demand.update(tel)
        anomalous = self.anomalous()
        safety = getattr(self.policy, "safety", None)
        if safety is not None and anomalous.any():  # the envelope's own anomaly revert
            hold = safety.config.anomaly_hold_ticks + 1
            safety._anomaly_left = np.where(anomalous, hold, safety._anomaly_left)
        settled = settled_devices(self.facts, aggs)
        controls = self.policy.decide(
            Observation(self._tick, self.facts, demand, tel, settled=settled)
        )
        self.counters.decisions += 1
        controls = self._revert_anomalous(controls, anomalous)
        intents = controls_to_intents(
            self.facts,
            controls,
            caps_w=self.caps_w,
            standby=self.standby,
            weights=self.weights,
            host_of=self.host_of,
        )
        keep = []
        for it in intents:
            if self.controllable(it.device, it.host_id):
                keep.append(it)
            else:
                self.counters.skipped_uncontrollable += 1
        if self.mode == "auto":
            return self._emit_auto(keep, controls), []
        return [], self._emit_advice(keep, tel)

    def _observe_caps(self, tel: DeviceTelemetry) -> None:
        for i in np.flatnonzero(tel.reporting & np.isfinite(tel.cap_w)):
            cmd = self._commanded.get(int(i))
            if cmd is not None and cmd[1] > tel.ts_ns:
                continue  # commanded after this window: the window cannot show it yet
            self._commanded.pop(int(i), None)
            self.caps_w[i] = tel.cap_w[i]

    def _revert_anomalous(self, c: Controls, anomalous: Mask) -> Controls:
        if not anomalous.any():
            return c
        f = self.facts
        self.counters.anomaly_reverts += int(anomalous.sum())
        caps = np.asarray(f.tdp_w if c.caps_w is None else c.caps_w, dtype=float).copy()
        caps[anomalous] = f.tdp_w[anomalous]
        w = np.asarray(f.even_weights if c.weights is None else c.weights, dtype=float).copy()
        cut = w.copy()
        cut[:, anomalous] = 0.0
        ok = cut.sum(axis=1) > 0  # a stream with no other device keeps its weights
        w[ok] = cut[ok]
        standby = None if c.standby is None else np.asarray(c.standby, dtype=bool) & ~anomalous
        return Controls(caps_w=caps, weights=w, standby=standby)

    def _emit_auto(self, intents: list[Intent], controls: Controls) -> list[Action]:
        out = []
        for it in intents:
            action = self.signer.sign(it, mode="auto", reason="learned policy")
            self._sent[action.action_id] = _Sent(it.host_id, it.kind, it.device)
            if it.kind == "set_power_cap" and it.device is not None and it.cap_w is not None:
                self._commanded[it.device] = (it.cap_w, action.issued_ts_ns)
                self.caps_w[it.device] = it.cap_w
            elif it.kind in ("park", "wake") and it.device is not None:
                self.standby[it.device] = it.kind == "park"
            elif it.kind == "set_load_weights" and it.stream is not None and it.weights:
                for d, wt in it.weights.items():
                    self.weights[it.stream, self._index[d]] = wt
            out.append(action)
        self.counters.actions_sent += len(out)
        if len(self._sent) > 100_000:
            self._sent = dict(list(self._sent.items())[-50_000:])
        return out

    def _emit_advice(self, intents: list[Intent], tel: DeviceTelemetry) -> list[Action]:
        out = []
        for it in intents:
            key = (it.host_id, it.kind, it.device if it.device is not None else it.stream)
            target = (
                round(it.cap_w)
                if it.cap_w is not None
                else tuple(sorted((it.weights or {}).items()))
            )
            if self._last_advice.get(key) == target:
                continue  # same recommendation as last time: record it once
            self._last_advice[key] = target
            out.append(self.signer.sign(it, mode="advise", reason=self.savings_reason(it, tel)))
        self.counters.recommendations += len(out)
        return out

    # -- expected savings from the policy's own model ---------------------------------------------
    def expected_power(self, d: int, cap_w: float, rate: float) -> tuple[float, float] | None:
        """``(power W, served rate)`` of device ``d`` serving up to ``rate`` under ``cap_w``,
        from the learned model (``None`` while the device's stream is not fitted)."""
        f = self.facts
        est = getattr(self.policy, "estimator", None)
        if est is None:
            return None
        streams = np.flatnonzero(f.membership[:, d])
        fitted = [s for s in streams if est.est[s].fitted]
        if not fitted:
            return None
        s = max(fitted, key=lambda s: self.weights[s, d])
        u, beta, eff = est.est[s].util, est.est[s].beta, float(est.eff[d])
        dyn = u * (f.tdp_w[d] - f.idle_w[d])
        x = min(1.0, max((cap_w - f.idle_w[d]) / dyn, 1e-9))
        full_rate = f.peak_rate[d] * eff * u * x**beta
        served = min(rate, full_rate)
        busy = served / full_rate if full_rate > 0 else 0.0
        return float(f.idle_w[d] + x * dyn * busy), float(served)

    def savings_reason(self, it: Intent, tel: DeviceTelemetry) -> str:
        f, d = self.facts, it.device
        if d is None or not tel.reporting[d]:
            return "learned policy: expected savings unknown (load weights)"
        rate = float(np.nan_to_num(tel.work_rate[d]))
        power = float(np.nan_to_num(tel.power_w[d]))
        if it.kind == "park":
            saved = power - float(f.standby_w[d])
            return f"learned policy: expected savings {saved:.1f} W (parked), rate {rate:.1f}/s"
        if it.kind != "set_power_cap" or it.cap_w is None:
            return "learned policy: expected savings 0.0 W (wake)"
        now = self.expected_power(d, float(self.caps_w[d]), rate)
        new = self.expected_power(d, it.cap_w, rate)
        if now is None or new is None or now[1] <= 0 or new[1] <= 0:
            return "learned policy: expected savings unknown (model not fitted)"
        saved_w = now[0] - new[0]
        saved_j = now[0] / now[1] - new[0] / new[1]
        return (
            f"learned policy: cap {self.caps_w[d]:.0f}->{it.cap_w:.0f} W, expected savings "
            f"{saved_w:.1f} W, {saved_j:.4f} J/unit (model), rate {new[1]:.1f}/s"
        )


# -- the Kafka loop -------------------------------------------------------------------------------
def run_optimizer(
    settings: Any,
    scenario: Scenario,
    mode: Mode,
    key_path: str | Path,
    stop_event: threading.Event,
    *,
    hosts: Iterable[str] | None = None,
    recommendations_path: str | Path | None = None,
    window_s: float | None = None,
    group_id: str | None = None,
    on_window: Callable[[LiveOptimizer], None] | None = None,
    **options: Any,
) -> LiveOptimizer:
    """Consume aggregates, anomalies, alerts and action results; publish decisions until
    ``stop_event`` is set. Returns the optimizer (its counters) when stopped."""
    from kafka import KafkaConsumer, KafkaProducer

    from accelpilot.errors import SchemaError
    from accelpilot.schemas.topics import (
        ACTION_RESULTS,
        ACTIONS,
        AGGREGATES,
        ALERTS,
        ANOMALIES,
        GROUP_METADATA_MAX_AGE_MS,
    )

    facts = facts_for_hosts(scenario, hosts, window_s=window_s)
    opt = LiveOptimizer(facts, Signer.from_file(key_path), mode=mode, window_s=window_s, **options)
    rec_path = Path(recommendations_path) if recommendations_path else None
    if mode == "advise" and rec_path is None:
        raise ValueError("advise mode needs a recommendations path")
    topics = {
        settings.topic(AGGREGATES): (Aggregate, opt.on_aggregate),
        settings.topic(ANOMALIES): (AnomalyScore, opt.on_anomaly),
        settings.topic(ALERTS): (Alert, opt.on_alert),
        settings.topic(ACTION_RESULTS): (ActionResult, opt.on_result),
    }
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group_id or f"accelpilot-optimizer-{settings.host_id}",
        # Only what happens from now on matters: old windows and results are not decisions.
        auto_offset_reset="latest",
        enable_auto_commit=True,
        metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
    )
    producer = (
        KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        if mode == "auto"
        else None
    )
    actions_topic = settings.topic(ACTIONS)
    log.info("optimizer (%s) on %d devices, %d streams", mode, facts.n_devices, facts.n_streams)
    try:
        while not stop_event.is_set():
            for tp, records in consumer.poll(timeout_ms=200).items():
                kind, handler = topics[tp.topic]
                for rec in records:
                    try:
                        handler(codec.decode(kind, rec.value))
                    except SchemaError as e:
                        log.warning("skipping undecodable %s record: %s", tp.topic, e)
            windows = opt.counters.windows
            auto, advice = opt.poll()
            for action in auto:
                assert producer is not None
                producer.send(
                    actions_topic, key=action.host_id.encode(), value=codec.encode(action)
                )
            if auto:
                assert producer is not None
                producer.flush()
            if advice and rec_path is not None:
                rec_path.parent.mkdir(parents=True, exist_ok=True)
                with rec_path.open("ab") as fh:
                    fh.write(b"".join(codec.encode(a) + b"\n" for a in advice))
            if on_window is not None and opt.counters.windows != windows:
                on_window(opt)
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
    return opt
