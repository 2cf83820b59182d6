"""The read-only console (real-pipeline mode) against the real InfluxDB: the points are written
with the worker's own line builders, and every read endpoint gives them back."""

from __future__ import annotations

import time
import urllib.request

import msgspec
import pytest
from fastapi.testclient import TestClient

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.console.app import create_app
from accelpilot.console.auth import Auth
from accelpilot.console.influx_source import InfluxSource
from accelpilot.dashboards.measurements import action_result_lines
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.streams.aggregate_lines import aggregate_line
from accelpilot.streams.aggregates import WindowAggregator
from accelpilot.streams.event_lines import alert_lines, anomaly_lines
from accelpilot.streams.influx_lines import sample_lines

pytestmark = [pytest.mark.service]

TICKS = 40


def write(settings: Settings, lines: list[str]) -> None:
    url = f"{settings.influx.url}/write?db={settings.influx.database}&precision=ns"
    req = urllib.request.Request(url, data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def test_read_only_console_over_influxdb(service_settings: Settings) -> None:
    settings = service_settings
    t0 = (time.time_ns() - 600 * 10**9) // 10**9 * 10**9
    samples = [
        s
        for host in ("h1", "h2")
        for s in synthetic_samples(host, n_devices=3, n_ticks=TICKS, start_ns=t0)
    ]
    # h1 leaves temp_c out of ticks 12-14: that window's temp_c count is partial (written as a
    # field of its own; full counts are not written, streams/aggregate_lines.py).
    samples = [
        msgspec.structs.replace(s, metrics={k: v for k, v in s.metrics.items() if k != "temp_c"})
        if s.host_id == "h1" and t0 + 12 * 10**9 <= s.ts_ns < t0 + 15 * 10**9
        else s
        for s in samples
    ]
    agg = WindowAggregator(10.0, 2.0)
    aggregates = [a for s in sorted(samples, key=lambda s: s.ts_ns) for a in agg.add(s)]
    alert = Alert(
        id="a1",
        kind="thermal",
        severity="critical",
        state="firing",
        host_id="h1",
        device_id="h1/gpu2",
        ts_ns=t0 + 30 * 10**9,
        started_ts_ns=t0 + 29 * 10**9,
        metric="temp_c",
        reason="h1/gpu2 at 91 °C",
    )
    score = AnomalyScore(
        id="s1", host_id="h2", device_id="h2/gpu0", ts_ns=t0 + 5 * 10**9, detector="robust",
        score=0.9, metric="power_w",
    )  # fmt: skip
    result = ActionResult(
        action_id="optimizer:learned-h1-1",
        host_id="h1",
        device_id="h1/gpu0",
        ts_ns=t0 + 20 * 10**9,
        outcome="applied",
        previous_cap_w=700.0,
        new_cap_w=400.0,
    )
    write(
        settings,
        [line for s in samples for line in sample_lines(s, cluster=settings.worker.cluster)]
        + [aggregate_line(a, cluster=settings.worker.cluster) for a in aggregates]
        + alert_lines([alert], cluster=settings.worker.cluster)
        + anomaly_lines([score], cluster=settings.worker.cluster)
        + action_result_lines([(result, "set_power_cap")], cluster=settings.worker.cluster),
    )
    source = InfluxSource(settings.influx.url, settings.influx.database)
    c = TestClient(create_app(None, source, Auth.for_bind("127.0.0.1", "")))

    st = c.get("/api/status").json()
    assert st["read_only"] is True and st["devices"] == 6 and st["hosts"] == 2
    assert st["data_ts_ns"] == t0 + (TICKS - 1) * 10**9 and st["alerts_firing"] == 1
    inv = c.get("/api/inventory").json()
    assert inv["hosts"] == ["h1", "h2"] and len(inv["devices"]) == 6
    assert {d["kind"] for d in inv["devices"]} == {"gpu"}

    hist = c.get("/api/history/device", params={"device_id": "h1/gpu1", "seconds": 3600}).json()
    mine = [s for s in samples if s.host_id == "h1"]
    assert hist["ts_ns"] == [s.ts_ns for s in mine]
    assert hist["power_w"] == pytest.approx([s.metrics["power_w"][1] for s in mine])
    assert hist["mem_used_bytes"] == [s.metrics["mem_used_bytes"][1] for s in mine]
    assert hist["work_rate"] == [None] * TICKS  # not reported: null, not 0
    host = c.get("/api/history/host", params={"host_id": "h2", "seconds": 3600}).json()
    theirs = [s for s in samples if s.host_id == "h2"]
    assert host["power_w"] == pytest.approx([sum(s.metrics["power_w"]) for s in theirs])
    temps = [sum(s.metrics["temp_c"]) / 3 for s in theirs]
    assert host["temp_c"] == pytest.approx(temps)
    live = c.get("/api/live").json()["devices"]
    assert live["h2/gpu2"]["power_w"] == pytest.approx(theirs[-1].metrics["power_w"][2])

    alerts = c.get("/api/alerts").json()["alerts"]
    assert [(a["id"], a["kind"], a["device_id"], a["reason"]) for a in alerts] == [
        ("a1", "thermal", "h1/gpu2", "h1/gpu2 at 91 °C")
    ]
    anomalies = c.get("/api/anomalies").json()["anomalies"]
    assert anomalies[0]["device_id"] == "h2/gpu0" and anomalies[0]["score"] == 0.9
    got = c.get("/api/aggregates", params={"scope": "host", "key": "h1"}).json()["aggregates"]
    want = [a for a in aggregates if a.scope == "host" and a.key == "h1"]
    assert [g["window_start_ns"] for g in got] == [a.window_start_ns for a in want]
    assert got[0]["metrics"]["power_w"]["mean"] == pytest.approx(want[0].metrics["power_w"].mean)
    assert got[0]["energy_j"] == pytest.approx(want[0].energy_j)
    counts = [{m: st["count"] for m, st in g["metrics"].items()} for g in got]
    assert counts == [{m: st.count for m, st in a.metrics.items()} for a in want]
    assert any(a.metrics["temp_c"].count < a.sample_count for a in want)  # the partial window
    audit = c.get("/api/audit").json()["actions"]
    assert audit[0]["action_id"] == result.action_id and audit[0]["kind"] == "set_power_cap"
    assert audit[0]["results"][0]["outcome"] == "applied" and audit[0]["cap_w"] == 400.0

    # Read-only: steering and the demo-only views answer 409 with the reason.
    r = c.post("/api/actions/power-cap", json={"device_ids": ["h1/gpu0"], "cap_w": 300})
    assert r.status_code == 409 and "read-only" in r.json()["detail"]
    for path in ("/api/score", "/api/recommendations", "/api/risk", "/api/streams"):
        assert c.get(path).status_code == 409


def test_console_of_one_cluster_shows_only_its_points(service_settings: Settings) -> None:
    settings = service_settings
    t0 = (time.time_ns() - 600 * 10**9) // 10**9 * 10**9
    lines: list[str] = []
    for cluster, host in (("eu-1", "e1"), ("us-1", "u1")):
        for s in synthetic_samples(host, n_devices=2, n_ticks=5, start_ns=t0):
            lines += sample_lines(s, cluster=cluster)
        alert = Alert(
            id=f"hot-{host}", kind="thermal", severity="warning", state="firing", host_id=host,
            device_id=f"{host}/gpu0", ts_ns=t0 + 10**9, started_ts_ns=t0, reason="hot",
            cluster=cluster,
        )  # fmt: skip
        lines += alert_lines([alert], cluster=cluster)
    write(settings, lines)
    url, db = settings.influx.url, settings.influx.database

    def client(cluster: str | None) -> TestClient:
        source = InfluxSource(url, db, cluster=cluster)
        return TestClient(create_app(None, source, Auth.for_bind("127.0.0.1", "")))

    every, eu = client(None), client("eu-1")
    assert every.get("/api/inventory").json()["hosts"] == ["e1", "u1"]
    assert eu.get("/api/inventory").json()["hosts"] == ["e1"]
    assert eu.get("/api/status").json()["devices"] == 2
    assert [(a["id"], a["cluster"]) for a in eu.get("/api/alerts").json()["alerts"]] == [
        ("hot-e1", "eu-1")
    ]
    hist = eu.get("/api/history/host", params={"host_id": "u1", "seconds": 3600}).json()
    assert hist["ts_ns"] == []  # another cluster's host: nothing
    assert client("nowhere").get("/api/status").json()["devices"] == 0
