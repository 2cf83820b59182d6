"""The console's real-pipeline source: the measurements the stream worker writes to InfluxDB.

Measurements (their one definition is the code that writes them):
``device_sample`` (streams/influx_lines.py), ``device_agg`` / ``host_agg`` / ``fleet_agg``
(streams/aggregate_lines.py), ``alert`` and ``anomaly`` (streams/event_lines.py) and
``action_result`` (dashboards/measurements.py). Read with InfluxQL through the v1 ``/query`` API
(:func:`accelpilot.stack.influxdb.influxql`).

What InfluxDB does not hold, this source cannot show: alert evidence (only the reason is
written), who issued an action (the worker stores results, keyed by action id, not the action),
and discovery data (vendor, model, capabilities).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accelpilot.console.source import CHART_METRICS, HOST_REDUCTION, LATEST_WINDOW_NS
from accelpilot.schemas.aggregates import Aggregate, MetricStats
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.aggregate_lines import metric_count

Query = Callable[[str], dict[str, Any]]
_STATS = ("min", "max", "mean", "p95", "last")  # and a count (streams/aggregate_lines.py)
_AGG_MEASUREMENT = {"device": "device_agg", "host": "host_agg", "fleet": "fleet_agg"}
_INFLUX_FN = {"sum": "sum", "avg": "mean"}


def literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _series(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for result in body.get("results", []):
        out += result.get("series", [])
    return out


def _rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of every series as a dict (columns + the series' tags)."""
    rows = []
    for s in _series(body):
        tags = s.get("tags", {})
        for values in s.get("values", []):
            rows.append({**tags, **dict(zip(s["columns"], values, strict=True))})
    return rows


class InfluxSource:
    """:class:`~accelpilot.console.source.ConsoleSource` over the worker's InfluxDB database;
    with ``cluster``, only the points of that cluster (tag ``cluster``, the worker group's
    ``worker.cluster``), else every point of the database."""

    def __init__(
        self, url: str, database: str, *, cluster: str | None = None, query: Query | None = None
    ) -> None:
        self.url = url
        self.database = database
        self.cluster = cluster
        self._query: Query = query or (lambda q: influxql(url, q, database))

    def _where(self, *conditions: str) -> str:
        """`` WHERE a AND b`` with this source's cluster condition, or "" for none."""
        if self.cluster is not None:
            conditions = (f'"cluster" = {literal(self.cluster)}', *conditions)
        return f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def newest_ts_ns(self) -> int | None:
        rows = _rows(self._query(f'SELECT last("seq") FROM "device_sample"{self._where()}'))
        return int(rows[0]["time"]) if rows else None

    def _window(self, seconds: float) -> tuple[int, int] | None:
        newest = self.newest_ts_ns()
        if newest is None:
            return None
        return newest - round(seconds * 1e9), newest

    def device_history(self, device_id: str, seconds: float) -> dict[str, Any]:
        window = self._window(seconds)
        if window is None:
            return _columns([])
        fields = ", ".join(f'"{m}"' for m in CHART_METRICS)
        rows = _rows(
            self._query(
                f'SELECT {fields} FROM "device_sample"'
                + self._where(
                    f'"device" = {literal(device_id)}',
                    f"time > {window[0]}",
                    f"time <= {window[1]}",
                )
            )
        )
        return _columns([[r["time"], *(r.get(m) for m in CHART_METRICS)] for r in rows])

    def host_history(self, host_id: str, seconds: float) -> dict[str, Any]:
        """Per second, the host's devices reduced as the aggregates do (W, B summed; degC, %
        averaged)."""
        window = self._window(seconds)
        if window is None:
            return _columns([])
        fields = ", ".join(
            f'{_INFLUX_FN[HOST_REDUCTION[m]]}("{m}") AS "{m}"' for m in CHART_METRICS
        )
        rows = _rows(
            self._query(
                f'SELECT {fields} FROM "device_sample"'
                + self._where(
                    f'"host" = {literal(host_id)}', f"time > {window[0]}", f"time <= {window[1]}"
                )
                + " GROUP BY time(1s) fill(none)"
            )
        )
        return _columns([[r["time"], *(r.get(m) for m in CHART_METRICS)] for r in rows])

    def latest(self) -> dict[str, dict[str, Any]]:
        newest = self.newest_ts_ns()
        if newest is None:
            return {}
        fields = ", ".join(f'last("{m}") AS "{m}"' for m in CHART_METRICS)
        rows = _rows(
            self._query(
                f'SELECT {fields} FROM "device_sample"'
                + self._where(f"time > {newest - LATEST_WINDOW_NS}", f"time <= {newest}")
                + ' GROUP BY "device", "host", "kind"'
            )
        )
        return {
            r["device"]: {
                "ts_ns": newest,
                "host_id": r["host"],
                "kind": r["kind"],
                **{m: r.get(m) for m in CHART_METRICS},
            }
            for r in rows
        }

    def alerts(self, limit: int) -> list[Alert]:
        rows = _rows(
            self._query(
                f'SELECT * FROM "alert"{self._where()} ORDER BY time DESC LIMIT {4 * int(limit)}'
            )
        )
        seen: dict[str, Alert] = {}
        for r in rows:
            seen.setdefault(
                r["id"],
                Alert(
                    id=r["id"],
                    kind=r["kind"],
                    severity=r["severity"],
                    state=r["state"],
                    host_id=r["host"],
                    device_id=None if r["device"] == "-" else r["device"],
                    ts_ns=int(r["time"]),
                    started_ts_ns=int(r["started_ts_ns"]),
                    reason=r["reason"],
                    cluster=r.get("cluster") or None,
                ),
            )
        return list(seen.values())[:limit]

    def anomalies(self, limit: int) -> list[AnomalyScore]:
        rows = _rows(
            self._query(
                f'SELECT * FROM "anomaly"{self._where()} ORDER BY time DESC LIMIT {int(limit)}'
            )
        )
        return [
            AnomalyScore(
                id=r["id"],
                host_id=r["host"],
                device_id=r["device"],
                ts_ns=int(r["time"]),
                detector=r["detector"],
                score=float(r["score"]),
                metric=None if r["metric"] == "-" else r["metric"],
            )
            for r in rows
        ]

    def aggregates(self, scope: str, key: str, window_s: float, limit: int) -> list[Aggregate]:
        measurement = _AGG_MEASUREMENT[scope]
        tag = "device" if scope == "device" else "host"
        keyed = (f'"{tag}" = {literal(key)}',) if scope != "fleet" else ()
        window = f"{int(window_s)}s" if float(window_s).is_integer() else f"{window_s!r}s"
        rows = _rows(
            self._query(
                f'SELECT * FROM "{measurement}"'
                + self._where(*keyed, f'"window" = {literal(window)}')
                + f" ORDER BY time DESC LIMIT {int(limit)}"
            )
        )
        out = []
        for r in reversed(rows):
            names = {c[: -len("_last")] for c in r if c.endswith("_last")}
            metrics = {
                n: MetricStats(
                    min=r[f"{n}_min"],
                    max=r[f"{n}_max"],
                    mean=r[f"{n}_mean"],
                    p95=r[f"{n}_p95"],
                    last=r[f"{n}_last"],
                    count=metric_count(r, n),
                )
                for n in sorted(names)
                if all(r.get(f"{n}_{s}") is not None for s in _STATS)
            }
            start = int(r["time"])
            out.append(
                Aggregate(
                    scope=scope,  # type: ignore[arg-type]
                    key=key if scope != "fleet" else "fleet",
                    host_id=r.get("host"),
                    window_s=float(window_s),
                    window_start_ns=start,
                    window_end_ns=start + round(window_s * 1e9),
                    sample_count=int(r["sample_count"]),
                    gap_count=int(r["gap_count"]),
                    energy_j=r.get("energy_j"),
                    metrics=metrics,
                )
            )
        return out

    def actions(self, limit: int) -> list[dict[str, Any]]:
        """Action results, newest first, grouped by action id (the issuer is not stored)."""
        rows = _rows(
            self._query(
                f'SELECT * FROM "action_result"{self._where()} '
                f"ORDER BY time DESC LIMIT {int(limit)}"
            )
        )
        by_id: dict[str, dict[str, Any]] = {}
        for r in rows:
            a = by_id.setdefault(
                r["action_id"],
                {
                    "action_id": r["action_id"],
                    "ts_ns": int(r["time"]),
                    "host_id": r["host"],
                    "device_id": None if r["device"] == "-" else r["device"],
                    "kind": r["kind"],
                    "issuer": None,
                    "mode": None,
                    "reason": r.get("reason") or "",
                    "cap_w": r.get("new_cap_w"),
                    "stream_id": None,
                    "weights": None,
                    "signed": None,
                    "key_id": None,
                    "results": [],
                },
            )
            a["results"].append(
                {
                    "device_id": None if r["device"] == "-" else r["device"],
                    "ts_ns": int(r["time"]),
                    "outcome": r["outcome"],
                    "reason": r.get("reason") or "",
                    "previous_cap_w": r.get("previous_cap_w"),
                    "new_cap_w": r.get("new_cap_w"),
                    "audit_hash": None,
                }
            )
        return list(by_id.values())


def _columns(rows: list[list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ts_ns": [int(r[0]) for r in rows]}
    for j, m in enumerate(CHART_METRICS, start=1):
        out[m] = [r[j] for r in rows]
    return out
