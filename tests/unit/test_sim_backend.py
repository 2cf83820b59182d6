"""The sim backend: the scenario's devices through the device interface, per host."""

from __future__ import annotations

import pytest

from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.discovery import discover, make_backend
from accelpilot.errors import ActuationError, ConfigError
from accelpilot.optimizer.scenario import load_bundled_scenario, parse_scenario


def _fleet() -> SimFleet:
    return SimFleet(load_bundled_scenario("two-phase-8gpu"))


def test_one_host_sees_its_devices_with_their_limits() -> None:
    backend = SimBackend(_fleet(), "node0", advances=True)
    assert backend.probe().available
    devices = backend.discover()
    assert [d.device_id for d in devices][:2] == ["node0/gpu0", "node0/gpu1"]
    limits = devices[0].capabilities.power_limits
    assert limits is not None and (limits.min_w, limits.max_w) == (200, 700)


def test_unknown_host_says_which_hosts_exist() -> None:
    status = SimBackend(_fleet(), "node9").probe()
    assert not status.available and "node0" in status.reason


def test_caps_set_through_the_backend_reach_the_physics() -> None:
    fleet = _fleet()
    backend = SimBackend(fleet, "node0", advances=True)
    before = backend.read().metrics
    backend.set_power_cap_w(0, 300.0)
    after = backend.read().metrics
    assert backend.power_cap_w(0) == 300.0
    assert after["cap_w"][0] == 300.0
    assert after["power_w"][0] < before["power_w"][0]
    with pytest.raises(ActuationError, match="outside"):
        backend.set_power_cap_w(0, 900.0)


def test_columns_follow_discovery_order_and_metric_names() -> None:
    backend = SimBackend(_fleet(), "node0", advances=True)
    reading = backend.read()
    n = len(backend.discover())
    assert {"power_w", "temp_c", "cap_w", "util_compute_pct", "work_rate"} <= set(reading.metrics)
    assert all(len(col) == n for col in reading.metrics.values())


def test_off_bus_device_reports_nothing_then_an_xid() -> None:
    sc = parse_scenario(
        {
            "name": "offbus",
            "duration_s": 10,
            "tick_s": 1,
            "seed": 1,
            "objective": {"max_slowdown": 1.1, "fleet_power_budget_w": None},
            "devices": [
                {
                    "id": "h/gpu0",
                    "kind": "gpu",
                    "vendor": "nvidia",
                    "model": "X",
                    "idle_w": 50,
                    "tdp_w": 300,
                    "min_cap_w": 100,
                    "peak_rate": 100.0,
                }
            ],
            "streams": [
                {
                    "id": "s",
                    "demand_rate": 50.0,
                    "devices": ["h/gpu0"],
                    "phases": [{"at_s": 0, "beta": 0.3, "util": 0.9}],
                }
            ],
            "faults": [{"at_s": 2, "device": "h/gpu0", "type": "off_bus", "duration_s": 3}],
        }
    )
    backend = SimBackend(SimFleet(sc), "h", advances=True)
    readings = [backend.read() for _ in range(7)]
    assert readings[3].metrics["power_w"] == [None]
    assert readings[1].events == []
    xids = [e for r in readings for e in r.events]
    assert [(e.device_id, e.kind, e.code) for e in xids] == [("h/gpu0", "xid", 79)]


def test_discovery_picks_available_backends_and_explains_the_rest() -> None:
    found = discover(
        [make_backend("sim", "node0", scenario="two-phase-8gpu"), SimBackend(_fleet(), "nowhere")]
    )
    assert [b.name for b in found.backends] == ["sim"]
    assert len(found.devices) == 8
    assert "nowhere" in found.missing["sim"]


def test_sim_without_scenario_and_unknown_backend_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs a scenario"):
        make_backend("sim", "h")
    with pytest.raises(ConfigError, match="unknown backend 'tpu-magic'"):
        make_backend("tpu-magic", "h")
