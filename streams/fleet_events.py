"""The worker's fleet-events stage: actions, their outcomes and the optimizer's savings in InfluxDB.

Inputs (read by the stream worker, which stays the only InfluxDB writer)
    ``fleet.actions``: remembered by ``action_id`` (kind and issuer; an action result names its
    action only). ``fleet.action-results``: one ``action_result`` point per result
    (:func:`~accelpilot.dashboards.measurements.action_result_lines`). The host windows the
    worker's ingest loop closes (host scope, the worker's shortest window; the same payloads it
    publishes to ``telemetry.aggregates``): one ``optimizer_savings`` point per host window once
    the optimizer acts on the host.

Savings: measured energy against an adjusted baseline
    Savings cannot be measured directly (nobody runs the same fleet twice), so they are estimated
    the way energy-conservation measurement and verification does it (IPMVP option B: a baseline
    period, then the baseline adjusted to the reporting period's production). Per host:

    - *Baseline period*: the host's windows that end before the first ``applied`` action of an
      optimizer on that host (the latest :data:`MAX_BASELINE_WINDOWS` of them). Its energy
      intensity is ``sum(power_w.mean * n) / sum(work_rate.mean * n)`` over those windows
      (``n`` = samples in the window): joules per unit of work at the devices' default limits.
    - *Reporting period*: every window that starts at or after that action. ``energy_j`` is the
      window's measured energy (the aggregate's ``energy_j``), ``baseline_energy_j`` the same
      work at the baseline intensity: ``energy_j * intensity_ref / intensity_window`` with
      ``intensity_window = power_w.mean / work_rate.mean``; so ``savings_ratio = 1 -
      intensity_window / intensity_ref``, the drop in energy per unit of work (the optimizer's
      own objective, J/unit). The point is tagged with the host and the policy of the latest
      applied action there (issuer ``optimizer:learned`` -> ``learned``).
    - Windows with no work (``work_rate`` absent or 0) carry no savings point, nor do windows
      straddling the first action, nor hosts whose baseline holds fewer than
      ``min_baseline_samples`` samples (a host the optimizer acted on before the worker saw it
      run unmanaged has no baseline). Energy intensity falls with load (idle power is spread over
      more work), so a reporting period much busier than the baseline overstates the savings and
      a much quieter one understates them.

    The baselines are kept in a small JSON file in the worker's data directory (written when
    they change), so a restarted worker keeps them; they do not move with a host whose
    partition a rebalance gives to another worker (that host then has no savings points there
    until its new worker has a baseline of its own).
    A replayed window overwrites its own baseline entry and its own point (same series and
    time): replays are idempotent.

Ordering: results are joined to their actions by id. The actuator publishes a result after it
read the action, so the action is normally known; a result whose action is unknown waits (up to
``action_wait_s`` per batch) for the actions agent, then is written with kind ``unknown``.
Aggregates of a window close at least ``allowed_lateness_s`` after its end, long after the
results of actions taken inside it, so windows are classified after the first action is known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelpilot.config import Settings
from accelpilot.dashboards.measurements import action_result_lines, savings_line
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS, DLQ
from accelpilot.streams.dead_letters import record_letter, send_rejected_lines
from accelpilot.streams.influx_sink import InfluxSink

log = logging.getLogger(__name__)

MAX_BASELINE_WINDOWS = 360  # one hour of 10 s windows
MAX_ACTIONS_REMEMBERED = 100_000
UNKNOWN_KIND = "unknown"
STATE_VERSION = 1


def policy_of(issuer: str) -> str:
    """``optimizer:learned`` -> ``learned``; any other issuer is kept as it is."""
    return issuer.split(":", 1)[1] if issuer.startswith("optimizer:") and ":" in issuer else issuer


@dataclass
class HostBaseline:
    """One host's baseline windows (start ns -> power mean, work-rate mean, samples) and the
    time of the first applied action there (the end of its baseline period)."""

    windows: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    first_action_ts_ns: int | None = None
    policy: str = ""

    @property
    def samples(self) -> int:
        return sum(n for _, _, n in self.windows.values())

    def intensity_j_per_unit(self) -> float | None:
        power = sum(p * n for p, _, n in self.windows.values())
        work = sum(r * n for _, r, n in self.windows.values())
        return power / work if work > 0 else None


class FleetEvents:
    """The pure core of the stage: feed actions, results and aggregates; get line protocol."""

    def __init__(
        self,
        window_s: float,
        state_path: Path | None = None,
        *,
        cluster: str,
        min_baseline_samples: int = 30,
    ) -> None:
        self.window_s = window_s
        self.cluster = cluster  # the tag of every line it makes (worker.cluster)
        self.state_path = state_path
        self.min_baseline_samples = min_baseline_samples
        self.actions: dict[str, tuple[str, str]] = {}  # action id -> (kind, issuer)
        self.hosts: dict[str, HostBaseline] = {}
        self._dirty = False
        if state_path is not None and state_path.exists():
            self._load(state_path)

    # -- actions and their results ---------------------------------------------------------------
    def on_action(self, action: Action) -> None:
        self.actions[action.action_id] = (action.kind, action.issuer)
        if len(self.actions) > MAX_ACTIONS_REMEMBERED:
            self.actions = dict(list(self.actions.items())[-MAX_ACTIONS_REMEMBERED // 2 :])

    def unknown(self, results: Iterable[ActionResult]) -> list[str]:
        """Action ids of ``results`` whose action has not been seen."""
        return [r.action_id for r in results if r.action_id not in self.actions]

    def on_results(self, results: Sequence[ActionResult]) -> list[str]:
        """``action_result`` lines; an applied optimizer action ends its host's baseline."""
        pairs = []
        for r in results:
            kind, issuer = self.actions.get(r.action_id, (UNKNOWN_KIND, ""))
            pairs.append((r, kind))
            if r.outcome != "applied" or not issuer.startswith("optimizer:"):
                continue
            host = self.hosts.setdefault(r.host_id, HostBaseline())
            if host.first_action_ts_ns is None or r.ts_ns < host.first_action_ts_ns:
                host.first_action_ts_ns = r.ts_ns
                window_ns = round(self.window_s * 1e9)
                for start in [s for s in host.windows if s + window_ns > r.ts_ns]:
                    del host.windows[start]  # arrived before the action was known: not baseline
                self._dirty = True
            if host.policy != policy_of(issuer):
                host.policy = policy_of(issuer)
                self._dirty = True
        return action_result_lines(pairs, cluster=self.cluster)

    # -- savings ---------------------------------------------------------------------------------
    def on_aggregate(self, agg: Aggregate) -> list[str]:
        """A host window: a baseline window before the first action, a savings point after."""
        if agg.scope != "host" or agg.host_id is None or agg.window_s != self.window_s:
            return []
        power = agg.metrics.get("power_w")
        rate = agg.metrics.get("work_rate")
        if power is None or rate is None or rate.mean <= 0 or power.mean <= 0:
            return []
        host = self.hosts.setdefault(agg.host_id, HostBaseline())
        first = host.first_action_ts_ns
        if first is None or agg.window_end_ns <= first:
            entry = (power.mean, rate.mean, agg.sample_count)
            if host.windows.get(agg.window_start_ns) != entry:
                host.windows[agg.window_start_ns] = entry
                for old in sorted(host.windows)[:-MAX_BASELINE_WINDOWS]:
                    del host.windows[old]
                self._dirty = True
            return []
        ref = host.intensity_j_per_unit()
        if agg.window_start_ns < first or ref is None or host.samples < self.min_baseline_samples:
            return []
        energy_j = agg.energy_j if agg.energy_j is not None else power.mean * agg.window_s
        baseline_j = energy_j * ref / (power.mean / rate.mean)
        return [
            savings_line(
                host.policy,
                agg.host_id,
                energy_j,
                baseline_j,
                agg.window_s,
                agg.window_end_ns,
                cluster=self.cluster,
            )
        ]

    # -- durable baselines -----------------------------------------------------------------------
    def save_if_changed(self) -> None:
        """Write the baselines (atomically) when they changed since the last save."""
        if not self._dirty or self.state_path is None:
            return
        doc = {
            "v": STATE_VERSION,
            "window_s": self.window_s,
            "hosts": {
                h: {
                    "first_action_ts_ns": b.first_action_ts_ns,
                    "policy": b.policy,
                    "windows": [[s, *w] for s, w in sorted(b.windows.items())],
                }
                for h, b in self.hosts.items()
            },
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_path)
        self._dirty = False

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
            if doc.get("v") != STATE_VERSION or doc.get("window_s") != self.window_s:
                log.warning("ignoring savings baselines in %s (other version or window)", path)
                return
            for h, b in doc["hosts"].items():
                self.hosts[h] = HostBaseline(
                    windows={int(s): (float(p), float(r), int(n)) for s, p, r, n in b["windows"]},
                    first_action_ts_ns=b["first_action_ts_ns"],
                    policy=b["policy"],
                )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning(
                "cannot read savings baselines from %s (%s); starting without them: hosts the "
                "optimizer already controls get no savings points until it is deleted and they "
                "run unmanaged again",
                path,
                e,
            )


# -- the faust wiring ------------------------------------------------------------------------------
def register_fleet_events(app: Any, settings: Settings, *, action_wait_s: float = 10.0) -> Any:
    """Add the stage's agents (actions and their results) to the worker's faust ``app``;
    returns the :class:`FleetEvents`. Its savings are fed by the ingest loop with the host
    windows it closes (streams/ingest_loop.py): the worker does not read its own aggregates
    back from Kafka."""
    w = settings.worker
    stage = FleetEvents(
        min(w.windows_s), w.data_dir / w.app_id / "savings-baselines.json", cluster=w.cluster
    )

    def raw_topic(name: str) -> Any:
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    dlq_topic = raw_topic(DLQ)
    # Lines InfluxDB refuses are dead-lettered under the topic their records came from.
    results_sink = InfluxSink(
        settings.influx, on_rejected=send_rejected_lines(dlq_topic, settings.topic(ACTION_RESULTS))
    )

    async def decoded(kind: type[Any], events: Sequence[Any]) -> list[Any]:
        """Decode each event's payload; one that does not decode is dead-lettered."""
        out = []
        for event in events:
            msg = event.message
            raw = event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
            try:
                out.append(codec.decode(kind, raw))
            except SchemaError as e:
                letter = record_letter(msg, raw, e, stage="fleet-events", now_ns=time.time_ns())
                await (await dlq_topic.send(key=msg.key, value=codec.encode(letter)))
        return out

    @app.agent(raw_topic(ACTIONS), name="fleet-actions")
    async def actions(stream: Any) -> None:
        async for events in stream.take_events(w.batch_max, within=w.batch_within_s):
            for action in await decoded(Action, events):
                stage.on_action(action)

    @app.agent(raw_topic(ACTION_RESULTS), name="fleet-action-results")
    async def results(stream: Any) -> None:
        manual = stream.noack()
        async for events in manual.noack_take(w.batch_max, within=w.batch_within_s):
            batch = await decoded(ActionResult, events)
            deadline = time.monotonic() + action_wait_s
            while stage.unknown(batch) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the actions agent reads the other topic meanwhile
            for action_id in stage.unknown(batch):
                log.warning("result of unknown action %s: written with kind 'unknown'", action_id)
            await results_sink.write(stage.on_results(batch))
            stage.save_if_changed()
            for event in events:
                await manual.ack(event)

    return stage
