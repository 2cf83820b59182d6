"""The generated dashboards and alert rules against Grafana's dashboard and alerting models, and
``push`` against a fake Grafana HTTP API.

The fake server below is NOT Grafana (no Grafana server can run on our CI machines): it
implements the documented request/response shapes of the endpoints ``push`` uses and records the
requests, so the test checks that our requests follow the documented API and that a second push
is idempotent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from accelpilot import cli
from accelpilot.dashboards import alert_rules
from accelpilot.dashboards.catalog import DATASOURCE_UID, all_dashboards
from accelpilot.dashboards.model import GRID_COLUMNS, PANEL_TYPES, SCHEMA_VERSION, UNITS
from accelpilot.dashboards.provisioning import DEFAULT_WEBHOOK_URL, export, push

BUILTIN_VARS = {
    "timeFilter",
    "__interval",
    "__interval_ms",
    "tag_host",
    "tag_device",
    "tag_metric",
    "tag_kind",
    "tag_policy",
    "tag_outcome",
}
DASHBOARDS = [d.to_json() for d in all_dashboards()]
UIDS = {d["uid"] for d in DASHBOARDS}


def _panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@pytest.mark.parametrize("dash", DASHBOARDS, ids=lambda d: d["uid"])
def test_dashboard_model(dash: dict[str, Any]) -> None:
    assert dash["schemaVersion"] == SCHEMA_VERSION >= 39
    assert dash["uid"] and len(dash["uid"]) <= 40
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    defined = {v["name"] for v in dash["templating"]["list"]}
    for p in panels:
        assert p["type"] in PANEL_TYPES
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS and g["h"] >= 1
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == DATASOURCE_UID
        assert p["fieldConfig"]["defaults"]["unit"] in UNITS
        assert p["targets"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID
            assert t["rawQuery"] is True and t["resultFormat"] in ("time_series", "table")
            assert "$timeFilter" in t["query"]
            used = set(re.findall(r"\$(\w+)", t["query"] + t.get("alias", "")))
            assert used - BUILTIN_VARS <= defined, (p["title"], used - BUILTIN_VARS - defined)
    before: set[str] = set()  # Grafana resolves variables in order: use only earlier ones
    for v in dash["templating"]["list"]:
        assert v["type"] == "query"
        assert v["datasource"]["uid"] == DATASOURCE_UID
        assert v["query"].startswith("SHOW TAG VALUES")
        assert set(re.findall(r"\$(\w+)", v["query"])) <= before
        before.add(v["name"])
    # No placeholder variables: each one filters some panel query (or a later variable's).
    texts = [t["query"] for p in panels for t in p.get("targets", [])]
    texts += [v["query"] for v in dash["templating"]["list"]]
    used_anywhere = {name for text in texts for name in re.findall(r"\$(\w+)", text)}
    assert defined <= used_anywhere, f"variables no query uses: {defined - used_anywhere}"
    # Links between dashboards resolve: each one reaches every other, none itself.
    assert {link["url"].removeprefix("/d/") for link in dash["links"]} == UIDS - {dash["uid"]}


def test_device_detail_shows_every_metric() -> None:
    from accelpilot.schemas.metrics import METRICS

    device = next(d for d in DASHBOARDS if d["uid"] == "accelpilot-device")
    text = json.dumps(device)
    for name in METRICS:
        assert f'\\"{name}\\"' in text, name


def test_alert_rules_structure() -> None:
    doc = alert_rules.rule_groups()
    assert doc["apiVersion"] == 1
    uids = set()
    for group in doc["groups"]:
        assert group["folder"] and group["interval"].endswith("s")
        for rule in group["rules"]:
            uids.add(rule["uid"])
            refs = [d["refId"] for d in rule["data"]]
            assert len(refs) == len(set(refs)) and rule["condition"] in refs
            for d in rule["data"]:
                model = d["model"]
                assert model["refId"] == d["refId"]
                if d["datasourceUid"] == "__expr__":
                    deps = (
                        {model["expression"]}
                        if model["type"] != "math"
                        else set(re.findall(r"\$(\w+)", model["expression"]))
                    )
                    assert deps <= set(refs) - {d["refId"]}
                else:
                    assert d["datasourceUid"] == DATASOURCE_UID and model["rawQuery"]
                    assert set(re.findall(r"\$(\w+)", model["query"])) <= {"timeFilter"}
            assert rule["annotations"]["__dashboardUid__"] in UIDS
    assert len(uids) == len(alert_rules.RULES) >= 5


@pytest.mark.parametrize("dash", DASHBOARDS, ids=lambda d: d["uid"])
def test_every_query_filters_by_the_chosen_clusters(dash: dict[str, Any]) -> None:
    """``cluster`` comes first, ``host``/``device`` (and ``policy``) list the chosen clusters'
    values, and every panel query keeps to the chosen clusters. The cluster's All is ``.*`` (it
    matches points that have no cluster tag too: tests/service/test_dashboard_queries.py)."""
    cluster = '"cluster" =~ /^$cluster$/'
    first, *others = dash["templating"]["list"]
    assert (first["name"], first["allValue"], first["includeAll"]) == ("cluster", ".*", True)
    assert first["query"] == 'SHOW TAG VALUES FROM "device_sample" WITH KEY = "cluster"'
    for v in others:
        assert cluster in v["query"], v["name"]
        assert v["allValue"] is None  # All = every listed value of the chosen clusters
    for p in _panels(dash):
        for t in p.get("targets", []):
            assert cluster in t["query"], (p["title"], t["query"])


def test_alert_rules_are_per_cluster() -> None:
    """Alert queries cannot use the dashboards' variables: each one keeps to points that carry
    a cluster tag and groups by it, so every alert instance has a ``cluster`` label."""
    for rule in alert_rules.RULES:
        assert f"$timeFilter AND {alert_rules.TAGGED} " in rule.query, rule.uid
        assert re.search(r'GROUP BY (time\(\w+\), )?"cluster", "host"', rule.query), rule.uid
    assert "cluster" in alert_rules.policy_tree()["group_by"]


def test_collector_silence_keeps_a_silent_hosts_series() -> None:
    """Per host, a silent collector must read as 0 rather than as a missing series (which Grafana
    resolves): zero-filled per-minute buckets over a range longer than the silence to detect.
    What the query returns on real data: tests/service/test_dashboard_queries.py."""
    rule = next(r for r in alert_rules.RULES if r.uid == "accelpilot-collector-silence")
    assert re.search(r'GROUP BY time\(1m\), "cluster", "host" fill\(0\)$', rule.query)
    assert rule.window_s == alert_rules.SILENCE_RANGE_S >= 10 * 60
    assert (rule.reducer, rule.condition, rule.no_data) == ("last", "lt 1", "Alerting")


def test_export_layout(tmp_path: Path) -> None:
    files = export(
        tmp_path,
        influx_url="http://127.0.0.1:8086",
        database="accelpilot",
        email="ops@example.com",
        webhook_token_env="ALERTS_TOKEN",
    )
    rel = {str(f.relative_to(tmp_path)) for f in files}
    assert {
        "datasources/accelpilot.yaml",
        "dashboards/accelpilot.yaml",
        "alerting/rules.yaml",
        "alerting/contact-points.yaml",
        "alerting/policies.yaml",
    } <= rel
    assert {f"dashboards/json/{u}.json" for u in UIDS} <= rel
    for f in files:
        doc = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
        assert doc
    ds = yaml.safe_load((tmp_path / "datasources/accelpilot.yaml").read_text())["datasources"][0]
    assert ds["uid"] == DATASOURCE_UID and ds["jsonData"]["version"] == "InfluxQL"
    assert ds["database"] == "accelpilot"
    # The contact point reaches `accelpilot alerts serve` by default; the token stays a reference.
    cps = yaml.safe_load((tmp_path / "alerting/contact-points.yaml").read_text())
    hook = cps["contactPoints"][0]["receivers"][0]
    assert hook["type"] == "webhook" and hook["settings"]["url"] == DEFAULT_WEBHOOK_URL
    assert hook["settings"]["authorization_credentials"] == "${ALERTS_TOKEN}"
    serve = typer.main.get_command(cli.app).commands["alerts"].commands["serve"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in serve.params}
    assert f"http://{defaults['grafana_listen']}{defaults['grafana_path']}" == DEFAULT_WEBHOOK_URL


# -- push against a fake that implements the documented endpoint shapes ---------------------------
class FakeGrafana(BaseHTTPRequestHandler):
    state: dict[str, Any]
    requests: list[tuple[str, str, Any]]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        path = self.path.split("?")[0]
        self.requests.append((method, path, body))
        assert self.headers["Authorization"] == "Bearer tok"
        s = self.state
        m = re.fullmatch(r"/api/datasources/uid/([\w-]+)", path)
        if m:
            if method == "GET":
                ds = s["ds"].get(m[1])
                return self._send(200, ds) if ds else self._send(404, {"message": "not found"})
            s["ds"][m[1]] = {**body, "id": 1}
            return self._send(200, {"message": "Datasource updated", "id": 1, "name": body["name"]})
        if path == "/api/datasources" and method == "POST":
            assert {"name", "type", "url", "access"} <= set(body)
            s["ds"][body["uid"]] = {**body, "id": 1}
            return self._send(200, {"message": "Datasource added", "id": 1, "name": body["name"]})
        m = re.fullmatch(r"/api/folders/([\w-]+)", path)
        if m:
            f = s["folders"].get(m[1])
            if method == "GET":
                return self._send(200, f) if f else self._send(404, {"message": "not found"})
            s["folders"][m[1]] = {**f, "title": body["title"]}
            return self._send(200, s["folders"][m[1]])
        if path == "/api/folders" and method == "POST":
            s["folders"][body["uid"]] = {"id": 1, "uid": body["uid"], "title": body["title"]}
            return self._send(200, s["folders"][body["uid"]])
        m = re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path)
        if m:
            d = s["dash"].get(m[1])
            return self._send(200, d) if d else self._send(404, {"message": "not found"})
        if path == "/api/dashboards/db" and method == "POST":
            assert body["overwrite"] is True and body["dashboard"]["uid"]
            uid = body["dashboard"]["uid"]
            s["dash"][uid] = {
                "dashboard": {**body["dashboard"], "id": 7},
                "meta": {"folderUid": body["folderUid"]},
            }
            return self._send(
                200, {"id": 7, "uid": uid, "status": "success", "version": 1, "url": f"/d/{uid}"}
            )
        m = re.fullmatch(r"/api/v1/provisioning/alert-rules(?:/([\w-]+))?", path)
        if m:
            if method == "GET":
                r = s["rules"].get(m[1])
                return self._send(200, r) if r else self._send(404, {"message": "not found"})
            assert {"title", "condition", "data", "folderUID", "ruleGroup", "for"} <= set(body)
            s["rules"][body["uid"]] = body
            s["groups"].setdefault(
                body["ruleGroup"],
                {"title": body["ruleGroup"], "folderUid": body["folderUID"], "interval": 60},
            )
            return self._send(201 if method == "POST" else 200, body)
        m = re.fullmatch(r"/api/v1/provisioning/folder/([\w-]+)/rule-groups/([\w-]+)", path)
        if m:
            if method == "PUT":
                s["groups"][m[2]] = body
            elif m[2] not in s["groups"]:
                return self._send(404, {"message": "rule group not found"})
            return self._send(200, s["groups"][m[2]])
        m = re.fullmatch(r"/api/v1/provisioning/contact-points(?:/([\w-]+))?", path)
        if m:
            if method == "GET":  # secure settings are never read back, as in Grafana
                return self._send(
                    200,
                    [
                        {
                            **cp,
                            "settings": {
                                **cp["settings"],
                                "authorization_credentials": "[REDACTED]",
                            },
                        }
                        if "authorization_credentials" in cp["settings"]
                        else cp
                        for cp in s["cps"].values()
                    ],
                )
            assert {"name", "type", "settings"} <= set(body)
            s["cps"][body["uid"]] = body
            return self._send(202, body)
        if path == "/api/v1/provisioning/policies":
            if method == "PUT":
                assert body["receiver"]
                s["policy"] = body
                return self._send(202, {"message": "policies updated"})
            return self._send(200, s["policy"])
        return self._send(404, {"message": f"fake: no {method} {path}"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


@pytest.fixture
def fake_grafana() -> Iterator[str]:
    """The fake's URL, with empty state and request log."""
    FakeGrafana.state = {
        "ds": {},
        "folders": {},
        "dash": {},
        "rules": {},
        "groups": {},
        "cps": {},
        "policy": {"receiver": "grafana-default-email"},
    }
    FakeGrafana.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PUSH_KW: dict[str, Any] = {
    "influx_url": "http://127.0.0.1:8086",
    "database": "accelpilot",
    "email": "ops@example.com",
}


def _writes_since(n: int) -> list[tuple[str, str, Any]]:
    return [r for r in FakeGrafana.requests[n:] if r[0] != "GET"]


def test_push_is_idempotent_against_fake_api(fake_grafana: str) -> None:
    url = fake_grafana
    first = push(url, "tok", webhook_token="hook-secret", **PUSH_KW)
    assert not first.unchanged and "datasource/accelpilot-influxdb" in first.created
    assert {f"dashboard/{u}" for u in UIDS} <= set(first.created)
    assert f"rule-group/accelpilot/{alert_rules.GROUP}" in first.created
    assert "policies" in first.updated
    n = len(FakeGrafana.requests)
    second = push(url, "tok", webhook_token="hook-secret", **PUSH_KW)
    assert not second.created and not second.updated, second.to_text()
    assert f"rule-group/accelpilot/{alert_rules.GROUP}" in second.unchanged
    assert _writes_since(n) == []
    paths = {
        (m, re.sub(r"/[\w-]+$", "/:uid", p) if "uid" in p or "rules/" in p else p)
        for m, p, _ in FakeGrafana.requests
    }
    assert ("POST", "/api/dashboards/db") in paths
    assert ("POST", "/api/v1/provisioning/alert-rules") in paths


def test_push_reports_what_it_changed(fake_grafana: str) -> None:
    """Someone edited a dashboard in Grafana and changed the rule group's interval: the next push
    puts both back, reports exactly those two as updated, and writes nothing else."""
    url = fake_grafana
    push(url, "tok", **PUSH_KW)
    edited = FakeGrafana.state["dash"]["accelpilot-host"]["dashboard"]
    edited["title"] = "edited in the UI"
    edited["panels"] = edited["panels"][:1]
    FakeGrafana.state["groups"][alert_rules.GROUP]["interval"] = 300
    n = len(FakeGrafana.requests)

    report = push(url, "tok", **PUSH_KW)

    group = f"rule-group/accelpilot/{alert_rules.GROUP}"
    assert sorted(report.updated) == sorted(["dashboard/accelpilot-host", group])
    assert not report.created
    assert f"updated: {', '.join(report.updated)}" in report.to_text().splitlines()
    writes = _writes_since(n)
    assert [(m, p) for m, p, _ in writes] == [
        ("POST", "/api/dashboards/db"),
        ("PUT", f"/api/v1/provisioning/folder/accelpilot/rule-groups/{alert_rules.GROUP}"),
    ]
    assert writes[0][2]["dashboard"]["uid"] == "accelpilot-host"
    assert writes[1][2]["interval"] == alert_rules.INTERVAL_S
    restored = FakeGrafana.state["dash"]["accelpilot-host"]["dashboard"]
    generated = next(d for d in DASHBOARDS if d["uid"] == "accelpilot-host")
    assert (restored["title"], restored["panels"]) == (generated["title"], generated["panels"])
    again = push(url, "tok", **PUSH_KW)
    assert not again.created and not again.updated, again.to_text()
