"""The embedded demo: the fleet's samples go through the worker's own stages into SQLite."""

from __future__ import annotations

from pathlib import Path

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
