"""The real-pipeline console's steering without services: the API over a stub InfluxDB source
and a recording publisher; every published action is checked by the agents' own verifier."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from accelpilot.collectors.action_verifier import ActionVerifier, DeviceLimits, JsonSeqStore
from accelpilot.collectors.device import host_of
from accelpilot.console.app import create_app
from accelpilot.console.auth import Auth, parse_tokens
from accelpilot.console.steering import PipelineSteering, PublishError
from accelpilot.demo import load_demo_scenario
from accelpilot.optimizer.facts import FleetFacts
from accelpilot.optimizer.live import facts_for_hosts
from accelpilot.schemas.actions import Action
from accelpilot.signing import Signer, generate_keypair, load_public_keys

TOKENS = "alice:operator:op-secret-1,wall:viewer:view-secret-1"
OP = {"Authorization": "Bearer op-secret-1"}
VIEWER = {"Authorization": "Bearer view-secret-1"}


class Recorder:
    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.fail = False

    def publish(self, actions: Any) -> None:
        if self.fail:
            raise PublishError("broker down (test)")
        self.actions.extend(actions)


class StubSource:
    """What InfluxDB would answer: two devices of node1 sampled, one action result."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def newest_ts_ns(self) -> int | None:
        return 10**18

    def latest(self) -> dict[str, dict[str, Any]]:
        row = {"ts_ns": 10**18, "host_id": "node1", "kind": "gpu", "power_w": 300.0}
        return {
            "node1/gpu2": {**row, "cap_w": 700.0},
            "other/gpu0": {**row, "host_id": "other", "cap_w": 500.0},
        }

    def device_history(self, device_id: str, seconds: float) -> dict[str, Any]:
        return {"ts_ns": []}

    def host_history(self, host_id: str, seconds: float) -> dict[str, Any]:
        return {"ts_ns": []}

    def alerts(self, limit: int) -> list[Any]:
        return []

    def anomalies(self, limit: int) -> list[Any]:
        return []

    def aggregates(self, scope: str, key: str, window_s: float, limit: int) -> list[Any]:
        return []

    def actions(self, limit: int) -> list[dict[str, Any]]:
        return list(self.results)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys", "operator")


@pytest.fixture
def facts() -> FleetFacts:
    return facts_for_hosts(load_demo_scenario(None))


@pytest.fixture
def rig(
    keys: tuple[Path, Path], facts: FleetFacts
) -> tuple[TestClient, PipelineSteering, Recorder, StubSource]:
    rec, source = Recorder(), StubSource()
    steering = PipelineSteering(
        facts, Signer.from_file(keys[0]), rec, topic="fleet.actions", fleet_name="demo-fleet"
    )
    auth = Auth(required=True, tokens=parse_tokens(TOKENS))
    return TestClient(create_app(None, source, auth, steering)), steering, rec, source


def verify(actions: list[Action], facts: FleetFacts, pub: Path, tmp_path: Path) -> None:
    """Every action passes the agents' verifier of its host (signature, seq, limits)."""
    keys = load_public_keys(pub)
    verifiers: dict[str, ActionVerifier] = {}
    limits = {
        d: DeviceLimits(float(facts.min_cap_w[i]), float(facts.tdp_w[i]), float(facts.tdp_w[i]))
        for i, d in enumerate(facts.device_ids)
    }
    for a in actions:
        v = verifiers.get(a.host_id)
        if v is None:
            store = JsonSeqStore(tmp_path / f"{a.host_id}.seq.json", a.host_id)
            v = verifiers[a.host_id] = ActionVerifier(keys, a.host_id, time.time_ns, store)
        mine = {d: lim for d, lim in limits.items() if host_of(d) == a.host_id}
        verdict = v.check(a, mine)
        assert verdict.accepted, (a, verdict)


def test_a_device_slider_publishes_one_signed_operator_action(
    rig: Any, facts: FleetFacts, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    c, steering, rec, _ = rig
    r = c.post(
        "/api/actions/power-cap", json={"device_ids": ["node1/gpu2"], "cap_w": 350}, headers=OP
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outcomes"] == {"published": 1} and body["topic"] == "fleet.actions"
    [a] = rec.actions
    assert (a.host_id, a.kind, a.device_id, a.cap_w) == (
        "node1",
        "set_power_cap",
        "node1/gpu2",
        350,
    )
    assert a.issuer == "operator:alice" and a.mode == "manual" and a.key_id == steering.key_id
    assert a.reason == "power cap slider: 350 W"
    assert body["published"][0]["action_id"] == a.action_id
    verify(rec.actions, facts, keys[1], tmp_path)


def test_a_host_slider_caps_every_device_clamped_into_its_limits(
    rig: Any, facts: FleetFacts, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    c, _, rec, _ = rig
    r = c.post(
        "/api/actions/power-cap", json={"host_id": "node0", "fraction_of_tdp": 0.25}, headers=OP
    )
    assert r.status_code == 200, r.text
    caps = {a.device_id: a.cap_w for a in rec.actions}
    assert len(caps) == 9 and caps["node0/gpu0"] == 200.0  # 175 W clamped up to the minimum
    assert caps["node0/cpu0"] == 150.0
    seqs = [a.seq for a in rec.actions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    verify(rec.actions, facts, keys[1], tmp_path)


def test_a_load_slider_sends_each_host_its_share_of_the_stream(
    rig: Any, facts: FleetFacts, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    c, _, rec, _ = rig
    weights = {"node3/gpu0": 3, "node0/cpu0": 1}
    r = c.post(
        "/api/actions/load-weights",
        json={"stream_id": "batch-embed", "weights": weights},
        headers=OP,
    )
    assert r.status_code == 200, r.text
    by_host = {a.host_id: a.weights for a in rec.actions}
    assert sorted(by_host) == ["node0", "node1", "node2", "node3"]  # every host of the stream
    assert all(a.kind == "set_load_weights" and a.stream_id == "batch-embed" for a in rec.actions)
    assert by_host["node0"] == {"node0/cpu0": 0.25}
    assert by_host["node1"] == {"node1/cpu0": 0.0}
    assert by_host["node3"] is not None and by_host["node3"]["node3/gpu0"] == 0.75
    assert sum(by_host["node3"].values()) == 0.75
    verify(rec.actions, facts, keys[1], tmp_path)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason"),
    [
        ("power-cap", {"device_ids": ["node1/gpu2"], "cap_w": 50}, OP, 422, "not in [200, 700]"),
        ("power-cap", {"device_ids": ["node1/gpu2"], "cap_w": 900}, OP, 422, "not in [200, 700]"),
        ("power-cap", {"device_ids": ["other/gpu0"], "cap_w": 300}, OP, 404, "fleet description"),
        ("power-cap", {"host_id": "nodeX", "cap_w": 300}, OP, 404, "unknown host"),
        ("power-cap", {"device_ids": ["node1/gpu2"], "cap_w": 300}, VIEWER, 403, "viewer"),
        ("power-cap", {"device_ids": ["node1/gpu2"], "cap_w": 300}, {}, 401, "token"),
        ("power-cap", {"device_ids": ["node1/gpu2"], "cap_w": float("nan")}, OP, 422, ""),
        ("load-weights", {"stream_id": "serve-chat", "weights": {"node0/gpu0": 1}}, OP, 422,
         "do not serve"),
        ("load-weights", {"stream_id": "serve-chat", "weights": {"node1/gpu0": 0}}, OP, 422,
         "unserved"),
        ("load-weights", {"stream_id": "nope", "weights": {"node1/gpu0": 1}}, OP, 404,
         "unknown stream"),
        ("fleet-budget", {"budget_w": 5000}, OP, 409, "fleet description"),
        ("release", {"all": True}, OP, 409, "nothing is pinned"),
    ],
)  # fmt: skip
def test_refused_requests_publish_nothing(
    rig: Any, path: str, body: dict[str, Any], headers: dict[str, str], status: int, reason: str
) -> None:
    c, _, rec, _ = rig
    if isinstance(body.get("cap_w"), float) and np.isnan(body["cap_w"]):
        r = c.post(
            f"/api/actions/{path}",
            content=b'{"device_ids": ["node1/gpu2"], "cap_w": NaN}',
            headers={**headers, "Content-Type": "application/json"},
        )
    else:
        r = c.post(f"/api/actions/{path}", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert rec.actions == []


def test_demo_only_views_and_controls_answer_409(rig: Any) -> None:
    c, _, rec, _ = rig
    for path in ("/api/score", "/api/recommendations", "/api/risk", "/api/audit/verify"):
        r = c.get(path, headers=VIEWER)
        assert r.status_code == 409 and "accelpilot demo" in r.json()["detail"]
    assert c.post("/api/mode", json={"mode": "auto"}, headers=OP).status_code == 409
    assert rec.actions == []


def test_kafka_refusing_the_actions_is_a_503_and_nothing_is_recorded(rig: Any) -> None:
    c, steering, rec, _ = rig
    rec.fail = True
    r = c.post(
        "/api/actions/power-cap", json={"device_ids": ["node1/gpu2"], "cap_w": 300}, headers=OP
    )
    assert r.status_code == 503 and "broker down" in r.json()["detail"]
    assert list(steering.published) == []
    audit = c.get("/api/audit", headers=VIEWER).json()["actions"]
    assert audit == []


def test_reads_carry_the_fleet_description(rig: Any) -> None:
    c, _, _, _ = rig
    st = c.get("/api/status", headers=VIEWER).json()
    assert st["read_only"] is False and st["pipeline"] is True and st["mode"] == "manual"
    assert st["steering"]["fleet"] == "demo-fleet" and st["steering"]["devices"] == 36
    assert st["fleet_min_cap_w"] > 0 and st["fleet_tdp_w"] > st["fleet_min_cap_w"]
    inv = {d["device_id"]: d for d in c.get("/api/inventory", headers=VIEWER).json()["devices"]}
    assert inv["node1/gpu2"]["capabilities"]["power_limits"] == {
        "min_w": 200.0, "max_w": 700.0, "default_w": 700.0,
    }  # fmt: skip
    assert inv["node1/gpu2"]["streams"] == ["serve-chat"]
    assert inv["other/gpu0"]["capabilities"]["power_limits"] is None  # not in the description
    live = c.get("/api/live", headers=VIEWER).json()["devices"]
    assert live["node1/gpu2"]["min_cap_w"] == 200.0 and live["node1/gpu2"]["tdp_w"] == 700.0
    assert live["other/gpu0"]["min_cap_w"] is None
    streams = {s["stream_id"]: s for s in c.get("/api/streams", headers=VIEWER).json()["streams"]}
    assert streams["serve-chat"]["weights_known"] is False
    assert sum(streams["batch-embed"]["weights"].values()) == pytest.approx(1.0)


def test_the_audit_joins_results_to_what_the_console_signed(rig: Any) -> None:
    c, _, rec, source = rig
    c.post("/api/actions/power-cap", json={"device_ids": ["node1/gpu2"], "cap_w": 350}, headers=OP)
    c.post("/api/actions/power-cap", json={"device_ids": ["node1/gpu3"], "cap_w": 360}, headers=OP)
    first, second = rec.actions
    # InfluxDB holds a result of the first only (as InfluxSource.actions groups it), and one of
    # an action this console did not sign.
    source.results = [
        {
            "action_id": first.action_id, "ts_ns": first.issued_ts_ns + 5, "host_id": "node1",
            "device_id": "node1/gpu2", "kind": "set_power_cap", "issuer": None, "mode": None,
            "reason": "", "cap_w": 350.0, "stream_id": None, "weights": None, "signed": None,
            "key_id": None, "results": [{"outcome": "applied", "new_cap_w": 350.0}],
        },
        {
            "action_id": "optimizer:learned-node2-1", "ts_ns": first.issued_ts_ns - 5,
            "host_id": "node2", "device_id": "node2/gpu0", "kind": "set_power_cap",
            "issuer": None, "mode": None, "reason": "", "cap_w": 400.0, "stream_id": None,
            "weights": None, "signed": None, "key_id": None,
            "results": [{"outcome": "applied", "new_cap_w": 400.0}],
        },
    ]  # fmt: skip
    audit = c.get("/api/audit", headers=VIEWER).json()["actions"]
    assert [a["action_id"] for a in audit] == [
        second.action_id, first.action_id, "optimizer:learned-node2-1",
    ]  # fmt: skip
    pending, done, other = audit
    assert pending["results"] == [] and pending["issuer"] == "operator:alice"
    assert done["issuer"] == "operator:alice" and done["signed"] is True
    assert done["mode"] == "manual" and done["reason"] == "power cap slider: 350 W"
    assert done["results"] == [{"outcome": "applied", "new_cap_w": 350.0}]
    assert other["issuer"] is None  # InfluxDB does not store who issued it


def test_operators_share_one_seq_per_host(keys: tuple[Path, Path], facts: FleetFacts) -> None:
    rec = Recorder()
    steering = PipelineSteering(
        facts, Signer.from_file(keys[0]), rec, topic="t", clock_ns=lambda: 1_000_000
    )
    i = facts.device_ids.index("node1/gpu2")
    for who in ("alice", "bob", "alice"):
        steering.set_caps(who, [i], cap_w=300.0)
    assert [a.seq for a in rec.actions] == [1000, 1001, 1002]  # a frozen clock: +1 each
    assert [a.issuer for a in rec.actions] == ["operator:alice", "operator:bob", "operator:alice"]
