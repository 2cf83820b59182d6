"""`accelpilot console --key`: the real-pipeline console steering through the real broker.

The console app runs over the real InfluxDB with the real Kafka producer of
:func:`~accelpilot.console.server.pipeline_steering`; what its sliders publish is read back
from the test's own ``fleet.actions`` topic and checked by the agents' own verifier. The slow
test closes the loop: a real `accelpilot agent -b sim` trusting the console's public key applies
the cap, the real worker writes the result and the new cap to InfluxDB, and the console shows
both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from accelpilot.collectors.action_verifier import ActionVerifier, DeviceLimits, JsonSeqStore
from accelpilot.collectors.device import host_of
from accelpilot.config import Settings
from accelpilot.console.app import create_app
from accelpilot.console.auth import Auth, parse_tokens
from accelpilot.console.influx_source import InfluxSource
from accelpilot.console.server import pipeline_steering
from accelpilot.demo import load_demo_scenario
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.schemas.topics import ACTIONS
from accelpilot.signing import generate_keypair, load_public_keys
from tests.conftest import write_config

pytestmark = [pytest.mark.service]

TOKENS = "alice:operator:op-secret-1,wall:viewer:view-secret-1"
OP = {"Authorization": "Bearer op-secret-1"}
VIEWER = {"Authorization": "Bearer view-secret-1"}


def published(settings: Settings) -> list[Action]:
    """Every action on the test's fleet.actions (all partitions, read until quiet). The console
    answered only once the broker acknowledged each action, so all of them are there."""
    from tests.service.test_optimizer_live import _read_all

    return [codec.decode(Action, b) for b in _read_all(settings, ACTIONS, settle_s=3.0)]


def test_sliders_publish_signed_actions_the_agents_verifier_accepts(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings
    priv, pub = generate_keypair(tmp_path / "keys", "console")
    scenario = load_demo_scenario(None)
    steering, publisher = pipeline_steering(settings, priv, scenario)
    source = InfluxSource(settings.influx.url, settings.influx.database)
    auth = Auth(required=True, tokens=parse_tokens(TOKENS))
    c = TestClient(create_app(None, source, auth, steering))
    try:
        # Refused: out of range, a viewer, no token, a device outside the fleet description,
        # the demo-only budget. None of them may reach the topic.
        refused = [
            ({"device_ids": ["node1/gpu2"], "cap_w": 50}, OP, 422),
            ({"device_ids": ["node1/gpu2"], "cap_w": 701}, OP, 422),
            ({"host_id": "node1", "cap_w": 690}, OP, 422),  # the CPU's limit is 360 W
            ({"device_ids": ["node1/gpu2"], "cap_w": 300}, VIEWER, 403),
            ({"device_ids": ["node1/gpu2"], "cap_w": 300}, {}, 401),
            ({"device_ids": ["elsewhere/gpu0"], "cap_w": 300}, OP, 404),
        ]
        for body, headers, status in refused:
            r = c.post("/api/actions/power-cap", json=body, headers=headers)
            assert r.status_code == status, (body, r.text)
        r = c.post("/api/actions/fleet-budget", json={"budget_w": 9000}, headers=OP)
        assert r.status_code == 409
        r = c.post(
            "/api/actions/load-weights",
            json={"stream_id": "serve-chat", "weights": {"node1/gpu0": 1}},
            headers=VIEWER,
        )
        assert r.status_code == 403

        # Accepted: a device, a host at a fraction of TDP, a stream's load over four hosts.
        r = c.post(
            "/api/actions/power-cap", json={"device_ids": ["node1/gpu2"], "cap_w": 350}, headers=OP
        )
        assert r.status_code == 200, r.text
        device_action = r.json()["published"][0]["action_id"]
        r = c.post(
            "/api/actions/power-cap", json={"host_id": "node2", "fraction_of_tdp": 0.5}, headers=OP
        )
        assert r.status_code == 200 and r.json()["outcomes"] == {"published": 9}
        r = c.post(
            "/api/actions/load-weights",
            json={"stream_id": "batch-embed", "weights": {"node3/gpu0": 1, "node0/cpu0": 1}},
            headers=OP,
        )
        assert r.status_code == 200 and r.json()["outcomes"] == {"published": 4}
    finally:
        publisher.close()

    actions = published(settings)
    assert len(actions) == 1 + 9 + 4  # the refused requests published nothing
    [first] = [a for a in actions if a.action_id == device_action]
    assert {a.issuer for a in actions} == {"operator:alice"}
    assert {a.mode for a in actions} == {"manual"} and {a.key_id for a in actions} == {
        steering.key_id
    }
    assert (first.host_id, first.device_id, first.cap_w) == ("node1", "node1/gpu2", 350.0)
    raw_keys = {a.host_id for a in actions}
    assert raw_keys == {"node0", "node1", "node2", "node3"}

    # The agents' own verifier, one per host, trusting only the console's public key.
    trusted = load_public_keys(pub)
    facts = steering.facts
    for host in sorted(raw_keys):
        verifier = ActionVerifier(
            trusted, host, time.time_ns, JsonSeqStore(tmp_path / f"{host}.json", host)
        )
        limits = {
            d: DeviceLimits(float(facts.min_cap_w[i]), float(facts.tdp_w[i]), float(facts.tdp_w[i]))
            for i, d in enumerate(facts.device_ids)
            if host_of(d) == host
        }
        for a in (a for a in actions if a.host_id == host):
            verdict = verifier.check(a, limits)
            assert verdict.accepted, (a, verdict)


@pytest.mark.slow
def test_an_agent_applies_the_console_cap_and_the_console_shows_the_outcome(
    service_settings: Settings, tmp_path: Path
) -> None:
    from tests.service.test_optimizer_live import _env, _start, _stop

    settings = service_settings
    priv, _ = generate_keypair(tmp_path / "keys", "console")
    worker_config = write_config(settings, tmp_path / "w.toml")
    procs = [
        _start(
            ["worker", "--config", str(worker_config), "-l", "warning"],
            _env(),
            tmp_path / "worker.log",
        ),
        _start(
            [
                "agent", "--config", str(write_config(settings, tmp_path / "a.toml")), "-b", "sim",
                "--scenario", "demo-fleet", "--interval", "0.5", "-l", "warning",
            ],
            _env(
                ACCELPILOT_HOST_ID="node1",
                ACCELPILOT_AGENT__BUFFER_DIR=str(tmp_path / "node1"),
                ACCELPILOT_AGENT__PUBLIC_KEYS=str(tmp_path / "keys"),
                ACCELPILOT_AGENT__METRICS_PORT="0",
            ),
            tmp_path / "agent.log",
        ),
    ]  # fmt: skip
    steering, publisher = pipeline_steering(
        settings, priv, load_demo_scenario(None), hosts=["node1"]
    )
    c = TestClient(
        create_app(
            None,
            InfluxSource(settings.influx.url, settings.influx.database),
            Auth.for_bind("127.0.0.1", ""),
            steering,
        )
    )

    def logs() -> str:
        return "\n".join(
            f"--- {n}\n" + (tmp_path / n).read_text()[-1500:] for n in ("worker.log", "agent.log")
        )

    def wait(what: str, ok: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = ok()
            if got:
                return got
            assert all(p.poll() is None for p in procs), logs()
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{logs()}")

    try:
        live = wait(
            "node1's samples in InfluxDB",
            lambda: c.get("/api/live").json()["devices"].get("node1/gpu2"),
            120,
        )
        assert live["cap_w"] == 700.0 and live["min_cap_w"] == 200.0 and live["tdp_w"] == 700.0
        r = c.post("/api/actions/power-cap", json={"device_ids": ["node1/gpu2"], "cap_w": 300})
        assert r.status_code == 200, r.text
        action_id = r.json()["published"][0]["action_id"]

        def outcome() -> dict[str, Any] | None:
            for a in c.get("/api/audit").json()["actions"]:
                if a["action_id"] == action_id and a["results"]:
                    return dict(a)
            return None

        done = wait("the agent's result in InfluxDB", outcome, 90)
        assert [x["outcome"] for x in done["results"]] == ["applied"], done
        assert done["results"][0]["new_cap_w"] == 300.0 and done["kind"] == "set_power_cap"
        assert done["issuer"] == "operator:local" and done["signed"] is True
        assert done["mode"] == "manual"
        wait(
            "the new cap in node1/gpu2's samples",
            lambda: c.get("/api/live").json()["devices"]["node1/gpu2"]["cap_w"] == 300.0,
            60,
        )
        hist = c.get("/api/history/device", params={"device_id": "node1/gpu2", "seconds": 120})
        caps = [x for x in hist.json()["cap_w"] if x is not None]
        assert caps[0] == 700.0 and caps[-1] == 300.0  # the chart shows the device respond
    finally:
        publisher.close()
        for p in procs:
            _stop(p)
