"""The actuator on the sim backend with the real verifier and audit log: what is applied, what is
refused, and that every decision is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog, verify
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas.actions import Action
from accelpilot.signing import Signer, generate_keypair, load_public_keys

NOW = 1_800_000_000 * 10**9


class Clock:
    def __init__(self) -> None:
        self.ns = NOW

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    priv, _pub = generate_keypair(tmp_path / "keys")
    signer = Signer.from_file(priv)
    clock = Clock()
    backend = SimBackend(SimFleet(load_bundled_scenario("two-phase-8gpu")), "node0", advances=True)
    backend.read()
    devices = backend.discover()
    verifier = ActionVerifier(
        load_public_keys(tmp_path / "keys"),
        "node0",
        clock,
        JsonSeqStore(tmp_path / "seq.json", "node0"),
    )
    audit = AuditLog(tmp_path / "audit.jsonl", clock_ns=clock)
    act = Actuator(
        "node0",
        [(backend, d) for d in devices],
        verifier,
        audit,
        load_weights_path=tmp_path / "load-weights.json",
        clock_ns=clock,
    )
    seq = iter(range(1, 1000))

    def make(kind: str = "set_power_cap", *, sign: bool = True, **fields: object) -> Action:
        base: dict[str, object] = dict(
            action_id=f"a{NOW}-{kind}",
            host_id="node0",
            seq=next(seq),
            kind=kind,
            issued_ts_ns=clock.ns,
            expires_ts_ns=clock.ns + 60 * 10**9,
            issuer="test",
            key_id=signer.key_id,
        )
        if kind == "set_power_cap":
            base.update(device_id="node0/gpu0", cap_w=450.0)
        base.update(fields)
        action = Action(**base)  # type: ignore[arg-type]
        return signer.sign(action) if sign else action

    return act, backend, make, tmp_path


def test_valid_cap_is_applied_and_read_back(rig) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, tmp = rig
    [result] = act.handle(make(cap_w=450.0))
    assert (result.outcome, result.previous_cap_w, result.new_cap_w) == ("applied", 700.0, 450.0)
    assert backend.power_cap_w(0) == 450.0
    [again] = act.handle(make(cap_w=450.2))
    assert again.outcome == "unchanged"
    assert verify(tmp / "audit.jsonl").ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"cap_w": 900.0}, "cap-out-of-range"),
        ({"host_id": "node1"}, "wrong-host"),
        ({"device_id": "node0/gpu99"}, "unknown-device"),
    ],
)
def test_bad_actions_change_nothing(rig, change, reason) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, tmp = rig
    [result] = act.handle(make(**change))
    assert result.outcome == "rejected" and result.reason.startswith(reason)
    assert backend.power_cap_w(0) == 700.0
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["outcome"] == "rejected"


def test_unsigned_expired_and_replayed_are_rejected(rig) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, _ = rig
    assert act.handle(make(sign=False))[0].reason.startswith("unsigned")
    assert act.handle(make(expires_ts_ns=NOW - 1, issued_ts_ns=NOW - 10))[0].reason.startswith(
        "expired"
    )
    good = make(cap_w=500.0)
    assert act.handle(good)[0].outcome == "applied"
    assert act.handle(good)[0].reason.startswith("replayed-seq")
    assert backend.power_cap_w(0) == 500.0


def test_dry_run_writes_nothing(rig) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, _ = rig
    act.dry_run = True
    [result] = act.handle(make(cap_w=300.0))
    assert (result.outcome, result.new_cap_w) == ("dry_run", 300.0)
    assert backend.power_cap_w(0) == 700.0


def test_reset_restores_default_on_every_device(rig) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, _ = rig
    act.handle(make(cap_w=300.0))
    results = act.handle(make("reset_power_cap"))
    assert len(results) == 8
    assert [r.outcome for r in results].count("applied") == 1
    assert backend.power_cap_w(0) == 700.0


def test_load_weights_are_published_atomically(rig) -> None:  # type: ignore[no-untyped-def]
    act, _, make, tmp = rig
    weights = {"node0/gpu0": 2.0, "node0/gpu1": 1.0}
    [r] = act.handle(make("set_load_weights", stream_id="train-a", weights=weights))
    assert r.outcome == "applied"
    doc = json.loads((tmp / "load-weights.json").read_text())
    assert doc["streams"]["train-a"]["weights"] == weights
    assert doc["host_id"] == "node0"


def test_park_reaches_the_simulator_and_restore_caps(rig) -> None:  # type: ignore[no-untyped-def]
    act, backend, make, _ = rig
    [r] = act.handle(make("park", device_id="node0/gpu3"))
    assert r.outcome == "applied"
    assert backend.fleet.standby[3]
    act.handle(make(cap_w=300.0))
    assert act.restore_caps() == ["node0/gpu0"]
    assert backend.power_cap_w(0) == 700.0
