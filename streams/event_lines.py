"""InfluxDB line protocol for anomaly scores and alerts (the dashboards and alert rules read these).

Every point is tagged ``cluster`` (the worker's ``worker.cluster``), then:

- ``anomaly``: tags ``host``, ``device``, ``detector``, ``metric``; fields ``score`` (float) and
  ``id`` (string); time = the scored sample's ``ts_ns``. Keyed by series + time: idempotent.
- ``alert``: tags ``host``, ``device`` (``-`` for host-wide), ``kind``, ``severity``; fields
  ``firing`` (1 firing / 0 resolved, int), ``state``, ``reason``, ``id`` (strings),
  ``started_ts_ns`` (int); time = the alert's ``ts_ns``.
"""

from __future__ import annotations

from collections.abc import Iterable

from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.streams.influx_lines import escape_tag

ANOMALY_MEASUREMENT = "anomaly"
ALERT_MEASUREMENT = "alert"


def _field_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def anomaly_lines(scores: Iterable[AnomalyScore], *, cluster: str) -> list[str]:
    series = f"{ANOMALY_MEASUREMENT},cluster={escape_tag(cluster)},host="
    return [
        f"{series}{escape_tag(a.host_id)},device={escape_tag(a.device_id)},"
        f"detector={escape_tag(a.detector)},metric={escape_tag(a.metric or '-')} "
        f"score={float(a.score)!r},id={_field_str(a.id)} {a.ts_ns}"
        for a in scores
    ]


def alert_lines(alerts: Iterable[Alert], *, cluster: str) -> list[str]:
    series = f"{ALERT_MEASUREMENT},cluster={escape_tag(cluster)},host="
    return [
        f"{series}{escape_tag(a.host_id)},device={escape_tag(a.device_id or '-')},"
        f"kind={escape_tag(a.kind)},severity={a.severity} "
        f"firing={1 if a.state == 'firing' else 0}i,state={_field_str(a.state)},"
        f"reason={_field_str(a.reason)},id={_field_str(a.id)},started_ts_ns={a.started_ts_ns}i "
        f"{a.ts_ns}"
        for a in alerts
    ]
