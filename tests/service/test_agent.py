"""`accelpilot agent` for real: sim devices, samples on the real broker, signed actions applied,
forged ones refused, every decision on fleet.action-results, SIGTERM flushes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accelpilot.config import Settings
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS, SAMPLES
from accelpilot.signing import Signer, generate_keypair
from tests.conftest import write_config
from tests.reaper import reaped
from tests.service.kafka_io import consume

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_agent_publishes_and_applies_only_verified_actions(
    service_settings: Settings, tmp_path: Path
) -> None:
    priv, _ = generate_keypair(tmp_path / "keys")
    forger_priv, _ = generate_keypair(tmp_path / "forger")
    signer, forger = Signer.from_file(priv), Signer.from_file(forger_priv)
    config = write_config(service_settings, tmp_path / "agent.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELPILOT_")}
    env.update(
        ACCELPILOT_HOST_ID="node1",
        ACCELPILOT_AGENT__BUFFER_DIR=str(tmp_path / "state"),
        ACCELPILOT_AGENT__PUBLIC_KEYS=str(tmp_path / "keys"),
        ACCELPILOT_AGENT__METRICS_PORT="0",
    )
    agent = reaped(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelpilot.cli",
                "agent",
                "--config",
                str(config),
                "-b",
                "sim",
                "--scenario",
                "demo-fleet",
                "--interval",
                "0.2",
                "-l",
                "warning",
            ],
            env=env,
            stdout=(tmp_path / "agent.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        time.sleep(6)  # discovery + the action consumer joining its group
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
        now = time.time_ns()

        def action(seq: int, cap_w: float, by: Signer = signer, **kw: object) -> Action:
            fields: dict[str, object] = dict(
                action_id=f"t-{seq}-{cap_w:g}",
                host_id="node1",
                seq=seq,
                kind="set_power_cap",
                device_id="node1/gpu2",
                cap_w=cap_w,
                issued_ts_ns=now,
                expires_ts_ns=now + 120 * 10**9,
                issuer="test",
                key_id=by.key_id,
            )
            fields.update(kw)
            return by.sign(Action(**fields))  # type: ignore[arg-type]

        from accelpilot.collectors.publisher import KafkaPublisher

        with KafkaPublisher(
            service_settings.kafka.bootstrap_servers, service_settings.topic(ACTIONS)
        ) as pub:
            pub.send("node1", action(10, 350.0))  # applied
            pub.send("node1", action(11, 330.0, by=forger))  # forged
            pub.send("node1", action(10, 300.0))  # replayed seq
            pub.send("node1", action(12, 5000.0))  # out of range
            pub.send("node2", action(13, 300.0, host_id="node2"))  # another host's

        raw = consume(service_settings, ACTION_RESULTS, lambda got: len(got) >= 4, 60)
        results = {r.action_id: r for r in (codec.decode(ActionResult, b) for b in raw)}
        assert results["t-10-350"].outcome == "applied"
        assert results["t-10-350"].new_cap_w == 350.0
        assert results["t-11-330"].reason.startswith("unknown-key")  # signed by a stranger
        assert results["t-10-300"].reason.startswith("replayed-seq")
        assert results["t-12-5000"].reason.startswith("cap-out-of-range")
        assert "t-13-300" not in results  # keyed for node2: not this agent's
        assert sum(r.outcome == "applied" for r in results.values()) == 1

        # The cap shows up in the device's telemetry.
        def capped(got: list[bytes]) -> bool:
            for b in got[-5:]:
                s = codec.decode(HostSample, b)
                if s.metrics["cap_w"][s.device_ids.index("node1/gpu2")] == 350.0:
                    return True
            return False

        samples = consume(service_settings, SAMPLES, capped, 60)
        assert capped(samples)
        decoded = [codec.decode(HostSample, b) for b in samples]
        assert {s.host_id for s in decoded} == {"node1"}
        seqs = [s.seq for s in decoded]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=60)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-2000:]
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    assert len(audit) >= 4
