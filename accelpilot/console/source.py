"""Where the console reads history and events from: one small interface, two sources.

:class:`ConsoleSource` is everything the console *reads* (time series, alerts, anomalies,
aggregates, the action audit). The embedded demo's :class:`SqliteSource` reads the
:class:`~accelpilot.streams.sqlite_store.SqliteStore` its pipeline writes; the read-only
real-pipeline console (`accelpilot console`) answers the same calls from InfluxDB, the worker's
measurements (:class:`~accelpilot.console.influx_source.InfluxSource`; docs/console.md).

Times: ``seconds`` of history count back from the newest sample in the store (the data's clock,
which in the demo runs faster than the wall clock), not from ``time.time()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from accelpilot.schemas import codec
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.topics import ALERTS, ANOMALIES
from accelpilot.streams.sqlite_store import SqliteStore

#: The metrics the console charts, per device; the host series reduce them as the aggregates
#: do (W and B summed, degC and % averaged).
CHART_METRICS = ("power_w", "cap_w", "temp_c", "util_compute_pct", "mem_used_bytes", "work_rate")
HOST_REDUCTION = {
    "power_w": "sum",
    "cap_w": "sum",
    "temp_c": "avg",
    "util_compute_pct": "avg",
    "mem_used_bytes": "sum",
    "work_rate": "sum",
}
LATEST_WINDOW_NS = 10_000_000_000


class ConsoleSource(Protocol):
    def newest_ts_ns(self) -> int | None: ...

    def device_history(self, device_id: str, seconds: float) -> dict[str, Any]: ...

    def host_history(self, host_id: str, seconds: float) -> dict[str, Any]: ...

    def latest(self) -> dict[str, dict[str, Any]]: ...

    def alerts(self, limit: int) -> list[Alert]: ...

    def anomalies(self, limit: int) -> list[AnomalyScore]: ...

    def aggregates(self, scope: str, key: str, window_s: float, limit: int) -> list[Aggregate]: ...

    def actions(self, limit: int) -> list[dict[str, Any]]: ...


class SqliteSource:
    """:class:`ConsoleSource` over the embedded store (tables: streams/sqlite_store.py)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def newest_ts_ns(self) -> int | None:
        row = self.store.query("SELECT max(ts_ns) FROM device_sample")
        return int(row[0][0]) if row and row[0][0] is not None else None

    def _since(self, seconds: float) -> int:
        newest = self.newest_ts_ns()
        return (newest or 0) - round(seconds * 1e9)

    def device_history(self, device_id: str, seconds: float) -> dict[str, Any]:
        rows = self.store.query(
            f"SELECT ts_ns, {', '.join(CHART_METRICS)} FROM device_sample "
            "WHERE device = ? AND ts_ns > ? ORDER BY ts_ns",
            (device_id, self._since(seconds)),
        )
        return _columns(rows)

    def host_history(self, host_id: str, seconds: float) -> dict[str, Any]:
        cols = ", ".join(f"{HOST_REDUCTION[m]}({m})" for m in CHART_METRICS)
        rows = self.store.query(
            f"SELECT ts_ns, {cols} FROM device_sample WHERE host = ? AND ts_ns > ? "
            "GROUP BY ts_ns ORDER BY ts_ns",
            (host_id, self._since(seconds)),
        )
        return _columns(rows)

    def latest(self) -> dict[str, dict[str, Any]]:
        newest = self.newest_ts_ns()
        if newest is None:
            return {}
        rows = self.store.query(
            f"SELECT device, ts_ns, {', '.join(CHART_METRICS)} FROM device_sample "
            "WHERE ts_ns > ? ORDER BY ts_ns",
            (newest - LATEST_WINDOW_NS,),
        )
        out: dict[str, dict[str, Any]] = {}
        for device, ts, *values in rows:  # ascending: the newest row of a device wins
            out[device] = {"ts_ns": ts, **dict(zip(CHART_METRICS, values, strict=True))}
        return out

    def alerts(self, limit: int) -> list[Alert]:
        """The latest state of each alert episode, newest first."""
        rows = self.store.query(
            "SELECT payload FROM event WHERE topic = ? ORDER BY ts_ns DESC LIMIT ?",
            (ALERTS, 4 * limit),
        )
        seen: dict[str, Alert] = {}
        for (payload,) in rows:
            a = codec.decode(Alert, payload)
            seen.setdefault(a.id, a)
        return list(seen.values())[:limit]

    def anomalies(self, limit: int) -> list[AnomalyScore]:
        rows = self.store.query(
            "SELECT payload FROM event WHERE topic = ? ORDER BY ts_ns DESC LIMIT ?",
            (ANOMALIES, limit),
        )
        return [codec.decode(AnomalyScore, p) for (p,) in rows]

    def aggregates(self, scope: str, key: str, window_s: float, limit: int) -> list[Aggregate]:
        rows = self.store.query(
            "SELECT payload FROM aggregate WHERE scope = ? AND key = ? AND window_s = ? "
            "ORDER BY window_start_ns DESC LIMIT ?",
            (scope, key, window_s, limit),
        )
        return [codec.decode(Aggregate, p) for (p,) in reversed(rows)]

    def actions(self, limit: int) -> list[dict[str, Any]]:
        """Actions newest first, each with every result its actuator reported."""
        acts = self.store.query(
            "SELECT action_id, ts_ns, host, device, kind, issuer, mode, reason, payload "
            "FROM action ORDER BY ts_ns DESC LIMIT ?",
            (limit,),
        )
        if not acts:
            return []
        ids = [a[0] for a in acts]
        marks = ", ".join("?" * len(ids))
        results: dict[str, list[dict[str, Any]]] = {}
        for r in self.store.query(
            "SELECT action_id, device, ts_ns, outcome, reason, previous_cap_w, new_cap_w, "
            f"audit_hash FROM action_result WHERE action_id IN ({marks})",
            ids,
        ):
            results.setdefault(r[0], []).append(
                {
                    "device_id": r[1] or None,
                    "ts_ns": r[2],
                    "outcome": r[3],
                    "reason": r[4],
                    "previous_cap_w": r[5],
                    "new_cap_w": r[6],
                    "audit_hash": r[7],
                }
            )
        out = []
        for aid, ts, host, device, kind, issuer, mode, reason, payload in acts:
            body = msgspec.json.decode(payload)
            out.append(
                {
                    "action_id": aid,
                    "ts_ns": ts,
                    "host_id": host,
                    "device_id": device,
                    "kind": kind,
                    "issuer": issuer,
                    "mode": mode,
                    "reason": reason,
                    "cap_w": body.get("cap_w"),
                    "stream_id": body.get("stream_id"),
                    "weights": body.get("weights"),
                    "signed": bool(body.get("signature")),
                    "key_id": body.get("key_id"),
                    "results": results.get(aid, []),
                }
            )
        return out


def _columns(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ts_ns": [r[0] for r in rows]}
    for j, m in enumerate(CHART_METRICS, start=1):
        out[m] = [r[j] for r in rows]
    return out
