"""Grafana's webhook notifications -> fleet.alerts: the documented body maps field by field, bad
bodies are refused whole, and the endpoint answers over real HTTP on 127.0.0.1."""

from __future__ import annotations

import copy
import doctest
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from accelpilot.dashboards import alert_rules, grafana_webhook
from accelpilot.dashboards.grafana_webhook import (
    GrafanaWebhookServer,
    grafana_alerts,
    parse_rfc3339_ns,
)
from accelpilot.dashboards.subscriptions import SubscriptionStore, subscribe
from accelpilot.errors import InvalidPayloadError, ServiceUnavailableError

# The example body of Grafana's webhook notifier documentation
# (https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/
# integrations/webhook-notifier/), with the labels our rules and their queries produce.
GRAFANA_BODY: dict[str, Any] = {
    "receiver": "accelpilot-alert-service",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "Device too hot",
                "grafana_folder": "accelpilot",
                "host": "node1",
                "device": "node1/gpu3",
                "kind": "thermal",
                "severity": "critical",
                "cluster": "eu-west",
                "team": "accelpilot",
            },
            "annotations": {"summary": "node1/gpu3 above 85 degC"},
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://grafana.example/alerting/grafana/accelpilot-thermal/view",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://grafana.example/alerting/silence/new?alertmanager=grafana",
            "dashboardURL": "https://grafana.example/d/accelpilot-device",
            "panelURL": "",
            "values": {"B": 91.25, "C": 1},
            "valueString": "[ var='B' labels={device=node1/gpu3} value=91.25 ]",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "Collector silent", "host": "node2", "severity": "page"},
            "annotations": {"description": "node2 sent no samples for 2 minutes"},
            "startsAt": "2021-10-12T09:40:00.123456789Z",
            "endsAt": "2021-10-12T09:45:00Z",
            "generatorURL": "",
            "fingerprint": "bc97ff14869b13e3",
            "values": {"B": 0, "C": True, "bad": "NaN"},
        },
    ],
    "groupLabels": {"alertname": "Device too hot"},
    "commonLabels": {"team": "accelpilot"},
    "commonAnnotations": {},
    "externalURL": "https://grafana.example/",
    "version": "1",
    "groupKey": '{}:{alertname="Device too hot"}',
    "truncatedAlerts": 0,
    "title": "[FIRING:1] Device too hot",
    "state": "alerting",
    "message": "**Firing**\n\nValue: B=91.25",
}


def test_the_documented_body_maps_to_fleet_alerts() -> None:
    hot, silent = grafana_alerts(GRAFANA_BODY, now_ns=1)
    assert hot.id == "grafana:c6eadffa33fcdf37:1634025063157076000"
    assert (hot.kind, hot.severity, hot.state) == ("thermal", "critical", "firing")
    assert (hot.host_id, hot.device_id, hot.metric) == ("node1", "node1/gpu3", None)
    assert hot.ts_ns == hot.started_ts_ns == 1634025063157076000
    assert hot.reason == "Grafana: Device too hot: node1/gpu3 above 85 degC"
    assert hot.evidence == {"B": 91.25, "C": 1.0}
    assert hot.cluster == "eu-west"  # our rules group by cluster: the label names it
    # No kind label: the alert name; unknown severity: warning; resolved: stamped at endsAt.
    assert (silent.kind, silent.severity, silent.state) == (
        "collector_silent",
        "warning",
        "resolved",
    )
    assert (silent.host_id, silent.device_id) == ("node2", None)
    assert silent.started_ts_ns == 1634031600123456789
    assert silent.ts_ns == 1634031900 * 10**9
    assert silent.reason == "Grafana: Collector silent: node2 sent no samples for 2 minutes"
    assert silent.evidence == {"B": 0.0}
    assert silent.cluster is None  # no cluster label


def test_our_rules_label_their_kind_for_the_mapping() -> None:
    kinds = {r["uid"]: r["labels"]["kind"] for r in alert_rules.api_rules()}
    assert kinds["accelpilot-thermal"] == "thermal"
    assert kinds["accelpilot-failure-risk"] == "failure_risk"
    assert kinds["accelpilot-device-silent"] == "device_silent"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.pop("alerts"), "grafana-shape"),
        (lambda b: b["alerts"].append("x"), "grafana-shape"),
        (lambda b: b["alerts"][1].update(status="pending"), "grafana-shape"),
        (lambda b: b["alerts"][0].update(labels=["a"]), "grafana-shape"),
        (lambda b: b["alerts"][1].update(startsAt="yesterday"), "grafana-timestamp"),
    ],
)
def test_a_body_that_is_not_grafanas_is_refused_whole(mutate: Any, reason: str) -> None:
    body = copy.deepcopy(GRAFANA_BODY)
    mutate(body)
    with pytest.raises(InvalidPayloadError) as e:
        grafana_alerts(body, now_ns=1)
    assert e.value.reason == reason


def test_rfc3339_with_nanoseconds_and_offsets() -> None:
    assert doctest.testmod(grafana_webhook).failed == 0
    assert parse_rfc3339_ns("1970-01-01T00:00:01.000000001Z") == 10**9 + 1
    assert parse_rfc3339_ns("1970-01-01T01:00:00+01:00") == 0
    assert parse_rfc3339_ns("0001-01-01T00:00:00Z") is None


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_endpoint_queues_durably_and_answers_errors_plainly(tmp_path: Path) -> None:
    store = tmp_path / "alerts.sqlite"
    subscribe(store, name="hot", webhook_url="http://127.0.0.1:9/x", kinds=["thermal"])
    server = GrafanaWebhookServer(store, "127.0.0.1", 0, token="s3cret")
    server.start()
    try:
        body = json.dumps(GRAFANA_BODY).encode()
        auth = {"Authorization": "Bearer s3cret"}
        assert _post(server.url, body)[0] == 401
        assert _post(server.url, body, {"Authorization": "Bearer nope"})[0] == 401
        assert _post(server.url.replace("/grafana", "/other"), body, auth)[0] == 404
        code, answer = _post(server.url, b"{not json", auth)
        assert code == 400 and "not a Grafana webhook body" in answer["error"]
        assert _post(server.url, body, auth) == (
            200,
            {"received": 2, "queued": 1, "duplicates": 0, "unmatched": 1},
        )
        # Grafana repeats a still-firing alert: queued once per subscription.
        assert _post(server.url, body, auth)[1]["duplicates"] == 1
    finally:
        server.stop()
    with SubscriptionStore(store) as view:
        assert view.pending_count() == 1  # durable: the thermal alert waits for delivery
    with pytest.raises(ServiceUnavailableError, match="cannot listen"):
        busy = GrafanaWebhookServer(store, "127.0.0.1", 0)
        try:
            GrafanaWebhookServer(store, "127.0.0.1", int(busy.url.split(":")[2].split("/")[0]))
        finally:
            busy.stop()
