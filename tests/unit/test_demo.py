"""The embedded demo: the fleet's samples go through the worker's own stages into SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from accelpilot.cli import app
from accelpilot.demo import Demo, load_demo_scenario


def test_demo_ticks_store_every_device_and_see_the_off_bus_fault(tmp_path: Path) -> None:
    demo = Demo(load_demo_scenario(None), tmp_path, speed=1000)
    for _ in range(30):
        demo.step()
    n_devices = len(demo.scenario.devices)
    assert demo.pipeline.counts.dead_letters == 0
    assert demo.pipeline.counts.device_samples == 30 * n_devices
    # node0/gpu6 falls off the bus at 22 s: its rows exist, its power is absent (NULL), not 0.
    rows = demo.store.query(
        "SELECT power_w FROM device_sample WHERE device = 'node0/gpu6' ORDER BY ts_ns"
    )
    assert len(rows) == 30
    assert rows[10][0] is not None and rows[25][0] is None
    assert demo.store.query("SELECT count(DISTINCT host) FROM device_sample")[0][0] == 4


def test_demo_command_runs_headless(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--headless", "--duration", "1", "--speed", "20"])
    assert result.exit_code == 0, result.output
    assert "device-samples stored, 0 dead letters" in result.output


def test_the_optimizer_acts_through_signed_verified_audited_actions(tmp_path: Path) -> None:
    from accelpilot.collectors.audit_log import verify

    demo = Demo(load_demo_scenario(None), tmp_path, speed=1000)
    for _ in range(30):
        demo.step()
    outcomes = {r.outcome for r in demo.results}
    assert outcomes == {"applied"}
    kinds = {row[0] for row in demo.store.query("SELECT kind FROM action")}
    assert {"set_power_cap", "set_load_weights"} <= kinds
    assert (demo.fleet.caps_w < demo.fleet.sim.tdp_w).any()  # caps really moved
    for host in demo.hosts:
        assert verify(tmp_path / f"{host.host_id}.audit.jsonl").ok
    # Even weights starve batch-embed (CPUs get a GPU's share); the optimizer fixes that.
    violations = demo.fleet.sim.totals().violation_ticks
    assert violations[-1] <= 5


def test_injected_faults_raise_alerts_in_the_demo(tmp_path: Path) -> None:
    demo = Demo(load_demo_scenario(None), tmp_path, speed=1000)
    for _ in range(30):
        demo.step()
    fired = {(a.kind, a.device_id) for a in demo.alerts if a.state == "firing"}
    assert ("thermal", "node1/gpu3") in fired
    assert ("ecc", "node3/gpu2") in fired
    assert ("device_silent", "node0/gpu6") in fired
    stored = demo.store.query("SELECT count(*) FROM event WHERE topic = 'fleet.alerts'")[0][0]
    assert stored >= 3


@pytest.mark.slow
def test_demo_headless_for_30_seconds_detects_and_acts(tmp_path: Path) -> None:
    import os
    import sqlite3
    import subprocess
    import sys

    from accelpilot.schemas.topics import ANOMALIES

    # The demo keeps its state (SQLite, audit logs, keys) in a fresh temporary directory: here.
    out = subprocess.run(
        [sys.executable, "-m", "accelpilot.cli", "demo", "--headless", "--duration", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    ).stdout
    (state,) = tmp_path.glob("accelpilot-demo-*")
    db = sqlite3.connect(state / "demo.sqlite")
    try:
        anomalies = db.execute(
            "SELECT device, count(*) FROM event WHERE topic = ? GROUP BY device", (ANOMALIES,)
        ).fetchall()
        applied = db.execute(
            "SELECT count(*) FROM action_result WHERE outcome = 'applied'"
        ).fetchone()[0]
    finally:
        db.close()
    caption = " ".join(out.split())
    reported = {
        what: int(caption.split(f" {what}")[0].split()[-1])
        for what in ("anomaly scores", "actions applied", "alerts firing")
    }
    # The detectors scored anomalies (stored as the worker would publish them), and the
    # summary's count is the stored one.
    n_anomalies = sum(n for _, n in anomalies)
    assert n_anomalies > 0, caption[-600:]
    assert reported["anomaly scores"] == n_anomalies, (anomalies, caption[-600:])
    assert applied > 0 and reported["actions applied"] == applied
    assert reported["alerts firing"] >= 3, caption[-600:]


@pytest.mark.slow
def test_demo_serves_the_console_while_it_runs(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "accelpilot.cli", "demo", "--duration", "20", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
                if r.status_code == 200 and r.json()["tick"] > 2:
                    status = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        if status is None:
            proc.kill()
            raise AssertionError(f"the console never answered: {proc.communicate()[0][-2000:]}")
        assert status["scenario"] == "demo-fleet" and status["devices"] == 36
        assert status["auth_required"] is False  # loopback
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "accelpilot" in page.text
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/actions/power-cap",
            json={"device_ids": ["node2/gpu0"], "cap_w": 300},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["outcomes"] == {"applied": 1}
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out and "not built yet" not in out


def test_the_clock_runs_on_when_the_scenario_wraps_around(tmp_path: Path) -> None:
    import json
    from importlib import resources

    import numpy as np

    bundled = resources.files("accelpilot.optimizer") / "scenarios" / "demo-fleet.json"
    doc = json.loads(bundled.read_text())
    doc["duration_s"] = 20
    doc["faults"] = [f for f in doc["faults"] if f["at_s"] + f["duration_s"] < 20]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(doc))
    demo = Demo(load_demo_scenario(path), tmp_path, speed=1000)
    for _ in range(45):
        demo.step()
    ts = [
        r[0]
        for r in demo.store.query(
            "SELECT ts_ns FROM device_sample WHERE device = 'node0/gpu0' ORDER BY ts_ns"
        )
    ]
    assert len(ts) == 45 and np.allclose(np.diff(ts), 1e9)  # nothing overwritten
    assert demo.pipeline.counts.dead_letters == 0
    assert demo.fleet.sim.seed == demo.scenario.seed + 2 and demo.score.ticks == 45
    assert demo.shadow.sim.seed == demo.fleet.sim.seed
