"""Fleet roll-ups downstream of the workers (pure; no Kafka here).

One worker sees only its partitions, so it cannot sum the fleet. :class:`FleetRollup` takes the
*host*-scope windows of every worker (in the worker these arrive on one single-partition topic,
so exactly one process of the group owns the roll-up) and emits the fleet window of
``(window_s, window_start_ns)`` with :func:`~accelpilot.streams.aggregates.fleet_rollup` once a
host window ending at least one window plus ``allowed_lateness_s`` after that window's end has
been seen (event time: the hosts have moved on past the next window).

A host window that arrives after its fleet window was emitted (a host replaying its disk buffer,
a worker replaying after a restart) re-emits the fleet window with that host included: the
InfluxDB point and the aggregate are keyed by window start, so the new one replaces the old.
Windows are forgotten ``keep_windows`` window lengths after they were emitted. A host window seen
twice (at-least-once delivery) replaces its first copy, so duplicates change nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from accelpilot.config import Settings
from accelpilot.errors import SchemaError
from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.topics import AGGREGATES
from accelpilot.streams.aggregate_lines import aggregate_lines
from accelpilot.streams.aggregates import fleet_rollup
from accelpilot.streams.influx_sink import InfluxSink

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000


class FleetRollup:
    """Host windows in, fleet windows out (see the module docstring)."""

    def __init__(self, allowed_lateness_s: float, keep_windows: int = 10) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s={allowed_lateness_s} must be >= 0")
        self.lateness_ns = round(allowed_lateness_s * _NS_PER_S)
        self.keep_windows = keep_windows
        # (window_s, window_start_ns) -> host -> its window
        self._windows: dict[tuple[float, int], dict[str, Aggregate]] = {}
        self._emitted: set[tuple[float, int]] = set()
        self._newest_end_ns: dict[float, int] = {}  # per window size
        self.re_emitted_total = 0

    def add(self, agg: Aggregate) -> list[Aggregate]:
        """Take one aggregate (anything but host scope is ignored); return the fleet windows
        that are complete now, oldest first."""
        if agg.scope != "host":
            return []
        key = (agg.window_s, agg.window_start_ns)
        hosts = self._windows.setdefault(key, {})
        hosts[agg.key] = agg
        if key in self._emitted:
            self.re_emitted_total += 1
            return [fleet_rollup(list(hosts.values()))]
        newest = max(self._newest_end_ns.get(agg.window_s, agg.window_end_ns), agg.window_end_ns)
        self._newest_end_ns[agg.window_s] = newest
        return self._complete(agg.window_s, newest)

    def flush(self) -> list[Aggregate]:
        """Emit every window not emitted yet (shutdown)."""
        out = []
        for key in sorted(self._windows):
            if key not in self._emitted:
                self._emitted.add(key)
                out.append(fleet_rollup(list(self._windows[key].values())))
        return out

    def _complete(self, window_s: float, newest_end_ns: int) -> list[Aggregate]:
        window_ns = round(window_s * _NS_PER_S)
        out = []
        for key in sorted(k for k in self._windows if k[0] == window_s):
            start = key[1]
            end = start + window_ns
            if key not in self._emitted and end + self.lateness_ns <= newest_end_ns - window_ns:
                self._emitted.add(key)
                out.append(fleet_rollup(list(self._windows[key].values())))
            elif key in self._emitted and end + self.keep_windows * window_ns < newest_end_ns:
                del self._windows[key]
                self._emitted.discard(key)
        return out

    @property
    def open_windows(self) -> int:
        return sum(1 for k in self._windows if k not in self._emitted)


#: The single-partition topic carrying every worker's host windows to the one roll-up owner.
ROLLUP_INPUT = "telemetry.fleet-rollup-input"


def rollup_input_topic(app: Any, settings: Settings) -> Any:
    """The worker sends its host windows here (key ``fleet``); faust creates it, 1 partition."""
    return app.topic(
        settings.topic(ROLLUP_INPUT),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
        internal=True,
    )


def register_fleet_rollup(app: Any, settings: Settings, input_topic: Any) -> FleetRollup:
    """Add the roll-up agent to the worker's faust ``app``.

    Only the worker that owns the input topic's one partition runs it. Its events (host windows)
    are acked once the fleet window they belong to is written to ``telemetry.aggregates`` and
    InfluxDB, so a restart rebuilds the open fleet windows from the topic (at-least-once; the
    fleet point and payload are keyed by window start, so a rewrite replaces)."""
    w = settings.worker
    rollup = FleetRollup(w.allowed_lateness_s)
    aggregates_topic = app.topic(
        settings.topic(AGGREGATES),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    sink = InfluxSink(settings.influx)
    held: dict[tuple[float, int], list[Any]] = {}

    @app.agent(input_topic, name="fleet-rollup")
    async def fleet_rollup_agent(stream: Any) -> None:
        manual = stream.noack()
        async for events in manual.noack_take(w.batch_max, within=w.batch_within_s):
            fleet: dict[tuple[float, int], Aggregate] = {}
            ack_now = []
            for event in events:
                raw = event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
                try:
                    agg = codec.decode(Aggregate, raw)
                except SchemaError as e:  # the worker wrote it: a bug, logged, not fatal
                    log.error("undecodable host window on %s: %s", event.message.topic, e)
                    ack_now.append(event)
                    continue
                held.setdefault((agg.window_s, agg.window_start_ns), []).append(event)
                for f in rollup.add(agg):
                    fleet[(f.window_s, f.window_start_ns)] = f  # the newest version wins
            pending = [
                await aggregates_topic.send(key=b"fleet", value=codec.encode(f), force=True)
                for f in fleet.values()
            ]
            for fut in pending:
                await fut
            await sink.write(aggregate_lines(fleet.values()))
            for key in fleet:
                ack_now += held.pop(key, [])
            for event in ack_now:
                await manual.ack(event)

    return rollup
