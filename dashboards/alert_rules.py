"""Grafana unified-alerting rules, contact points and notification policies, as code.

:func:`rule_groups` gives the provisioning-file shape (``apiVersion: 1``, ``groups``), and
:func:`api_rules` the same rules in the HTTP API's shape (``folderUID``, ``ruleGroup``). Each rule
queries InfluxDB (refId ``A``, raw InfluxQL with ``$timeFilter``: alert queries cannot use
dashboard template variables), reduces it (``B``) and compares it (``C``, the condition).

Clusters: every query keeps to points that carry a cluster tag (:data:`TAGGED`) and groups by
``cluster`` as well, so each alert instance is one cluster's and carries a ``cluster`` label
(notification policies can route on it; the policy tree groups by it). Points written before the
tag existed are left out: the rules look back 5-15 minutes, so they leave those ranges within 15
minutes of the upgrade anyway, and counted they would make every host's untagged series read as
a silent collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelpilot.dashboards.catalog import (
    DATASOURCE_UID,
    FOLDER_UID,
    UID_ANOMALIES,
    UID_DEVICE,
    UID_FLEET,
)

GROUP = "accelpilot"
INTERVAL_S = 60
WEBHOOK_UID = "accelpilot-webhook"
EMAIL_UID = "accelpilot-email"
EXPR = {"type": "__expr__", "uid": "__expr__"}
#: How far back the collector-silence rule looks for hosts: one silent for longer than this drops
#: out of its query, and Grafana resolves its alert (a missing series).
SILENCE_RANGE_S = 900
#: Only points with a cluster tag (a missing tag reads as "", which /.+/ does not match).
TAGGED = '"cluster" =~ /.+/'


@dataclass(frozen=True)
class Rule:
    uid: str
    title: str
    query: str
    reducer: str  # last, max, min, mean
    condition: str  # a threshold (gt/lt value) or a math expression over $B
    summary: str
    severity: str = "warning"
    for_: str = "2m"
    window_s: int = 300
    no_data: str = "OK"
    dashboard_uid: str = UID_ANOMALIES

    @property
    def kind(self) -> str:
        """The ``kind`` label (``accelpilot-failure-risk`` -> ``failure_risk``): the alert
        service maps Grafana's notifications to ``fleet.alerts`` kinds with it."""
        return self.uid.removeprefix("accelpilot-").replace("-", "_")

    def data(self, datasource_uid: str) -> list[dict[str, Any]]:
        a = {
            "refId": "A",
            "queryType": "",
            "relativeTimeRange": {"from": self.window_s, "to": 0},
            "datasourceUid": datasource_uid,
            "model": {
                "refId": "A",
                "datasource": {"type": "influxdb", "uid": datasource_uid},
                "rawQuery": True,
                "query": self.query,
                "resultFormat": "time_series",
                "intervalMs": 1000,
                "maxDataPoints": 43200,
            },
        }
        b = {
            "refId": "B",
            "relativeTimeRange": {"from": 0, "to": 0},
            "datasourceUid": "__expr__",
            "model": {
                "refId": "B",
                "datasource": EXPR,
                "type": "reduce",
                "expression": "A",
                "reducer": self.reducer,
                "settings": {"mode": "dropNN"},
            },
        }
        kind, _, arg = self.condition.partition(" ")
        if kind in ("gt", "lt"):
            c_model = {
                "refId": "C",
                "datasource": EXPR,
                "type": "threshold",
                "expression": "B",
                "conditions": [{"evaluator": {"type": kind, "params": [float(arg)]}}],
            }
        else:
            c_model = {
                "refId": "C",
                "datasource": EXPR,
                "type": "math",
                "expression": self.condition,
            }
        c = {
            "refId": "C",
            "relativeTimeRange": {"from": 0, "to": 0},
            "datasourceUid": "__expr__",
            "model": c_model,
        }
        return [a, b, c]

    def provisioning(self, datasource_uid: str) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "condition": "C",
            "data": self.data(datasource_uid),
            "noDataState": self.no_data,
            "execErrState": "Error",
            "for": self.for_,
            "annotations": {
                "summary": self.summary,
                "__dashboardUid__": self.dashboard_uid,
            },
            "labels": {"severity": self.severity, "team": "accelpilot", "kind": self.kind},
            "isPaused": False,
        }


RULES: tuple[Rule, ...] = (
    Rule(
        "accelpilot-anomaly",
        "Anomalous device telemetry",
        f'SELECT max("score") FROM "anomaly" WHERE $timeFilter AND {TAGGED} '
        'GROUP BY time(1m), "cluster", "host", "device", "metric"',
        "max",
        "gt 0.6",
        "{{ $labels.device }}: detector score on {{ $labels.metric }} >= 0.6",
    ),
    Rule(
        "accelpilot-failure-risk",
        "Device failure risk",
        f'SELECT last("firing") FROM "alert" WHERE $timeFilter AND {TAGGED} '
        'AND "kind" = \'failure_risk\' GROUP BY "cluster", "host", "device"',
        "last",
        "gt 0",
        "{{ $labels.device }}: failure risk alert firing",
        "critical",
        "0s",
        900,
    ),
    Rule(
        "accelpilot-thermal",
        "Device too hot",
        f'SELECT max("temp_c") FROM "device_sample" WHERE $timeFilter AND {TAGGED} '
        'GROUP BY time(30s), "cluster", "host", "device"',
        "max",
        "gt 85",
        "{{ $labels.device }} above 85 degC",
        "critical",
        "1m",
        dashboard_uid=UID_DEVICE,
    ),
    # Throttle: NVML clocks-event bits 0x08 HW slowdown, 0x20 SW thermal, 0x40 HW thermal,
    # 0x80 HW power brake (the mask is stored as a float, so the bits are tested with math).
    Rule(
        "accelpilot-throttle",
        "Device throttled by hardware or thermal limits",
        'SELECT last("throttle_reasons_mask") FROM "device_sample" WHERE $timeFilter '
        f'AND {TAGGED} GROUP BY "cluster", "host", "device"',
        "last",
        "(floor($B / 8) % 2) + (floor($B / 32) % 4) + (floor($B / 128) % 2) > 0",
        "{{ $labels.device }}: HW slowdown, thermal or power-brake throttling",
        dashboard_uid=UID_DEVICE,
    ),
    # Collector silence, per host: samples per minute over the last SILENCE_RANGE_S, zero-filled
    # (fill(0)), so a host seen in that range but silent now keeps its series with 0s instead of
    # dropping out of the result (which Grafana would resolve as a missing series). The value is
    # the samples of the last full minute plus the current, partial one (moving_average over two
    # buckets, times 2): a plain last bucket holds next to nothing just after a minute boundary or
    # while the newest samples are still on their way through Kafka. < 1: none in 1-2 minutes.
    # The whole fleet silent returns no series at all: NoData -> Alerting.
    Rule(
        "accelpilot-collector-silence",
        "Collector silent",
        'SELECT moving_average(count("seq"), 2) * 2 FROM "device_sample" WHERE $timeFilter '
        f'AND {TAGGED} GROUP BY time(1m), "cluster", "host" fill(0)',
        "last",
        "lt 1",
        "{{ $labels.host }} sent no samples for over a minute",
        "critical",
        "1m",
        SILENCE_RANGE_S,
        "Alerting",
        UID_FLEET,
    ),
    Rule(
        "accelpilot-device-silent",
        "Device silent while its host reports",
        f'SELECT last("firing") FROM "alert" WHERE $timeFilter AND {TAGGED} '
        'AND "kind" = \'device_silent\' GROUP BY "cluster", "host", "device"',
        "last",
        "gt 0",
        "{{ $labels.device }} stopped reporting",
        "critical",
        "0s",
        900,
    ),
)


def rule_groups(datasource_uid: str = DATASOURCE_UID, folder: str = "accelpilot") -> dict[str, Any]:
    """The ``alerting/rules.yaml`` provisioning document."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": GROUP,
                "folder": folder,
                "interval": f"{INTERVAL_S}s",
                "rules": [r.provisioning(datasource_uid) for r in RULES],
            }
        ],
    }


def api_rules(
    datasource_uid: str = DATASOURCE_UID, folder_uid: str = FOLDER_UID
) -> list[dict[str, Any]]:
    """The rules as ``POST/PUT /api/v1/provisioning/alert-rules`` bodies."""
    return [
        {**r.provisioning(datasource_uid), "orgID": 1, "folderUID": folder_uid, "ruleGroup": GROUP}
        for r in RULES
    ]


def contact_points(
    webhook_url: str, email: str | None = None, webhook_token: str | None = None
) -> list[dict[str, Any]]:
    """Receivers: the alert service's webhook (``accelpilot alerts serve`` listens on
    ``http://127.0.0.1:9095/grafana`` by default), and e-mail when an address is given.
    ``webhook_token``: sent as ``Authorization: Bearer <token>`` (a secure field in Grafana)."""
    settings: dict[str, Any] = {"url": webhook_url, "httpMethod": "POST"}
    if webhook_token:
        settings["authorization_scheme"] = "Bearer"
        settings["authorization_credentials"] = webhook_token
    points = [
        {
            "uid": WEBHOOK_UID,
            "name": "accelpilot-alert-service",
            "type": "webhook",
            "settings": settings,
            "disableResolveMessage": False,
        }
    ]
    if email:
        points.append(
            {
                "uid": EMAIL_UID,
                "name": "accelpilot-email",
                "type": "email",
                "settings": {"addresses": email, "singleEmail": True},
                "disableResolveMessage": False,
            }
        )
    return points


def policy_tree(email: str | None = None) -> dict[str, Any]:
    """Everything to the webhook; critical alerts also by e-mail when configured."""
    routes: list[dict[str, Any]] = []
    if email:
        routes.append(
            {
                "receiver": "accelpilot-email",
                "object_matchers": [["severity", "=", "critical"]],
                "continue": True,
            }
        )
    return {
        "receiver": "accelpilot-alert-service",
        "group_by": ["grafana_folder", "alertname", "cluster", "host"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": routes,
    }


def contact_points_file(
    webhook_url: str, email: str | None = None, webhook_token: str | None = None
) -> dict[str, Any]:
    """The ``alerting/contact-points.yaml`` provisioning document (pass ``webhook_token`` as
    ``"${ENV_VAR}"``: Grafana expands environment variables in provisioning files)."""
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": 1,
                "name": cp["name"],
                "receivers": [{k: v for k, v in cp.items() if k != "name"}],
            }
            for cp in contact_points(webhook_url, email, webhook_token)
        ],
    }


def policies_file(email: str | None = None) -> dict[str, Any]:
    """The ``alerting/policies.yaml`` provisioning document."""
    return {"apiVersion": 1, "policies": [{"orgId": 1, **policy_tree(email)}]}
