"""The actuator and the agent on the real NVML backend, without writing anything: a dry-run
actuator reads the enforced cap, audits what it would set and leaves the device alone; the agent
with no broker reachable keeps every real sample in its disk buffer (buffering, not loss)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog, verify
from accelpilot.collectors.backends.nvml import NvmlBackend
from accelpilot.collectors.disk_buffer import DiskBuffer
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.schemas.samples import HostSample
from accelpilot.signing import Signer, generate_keypair, load_public_keys
from tests.gpu.conftest import HOST

pytestmark = pytest.mark.gpu


def test_a_dry_run_actuator_reads_the_real_cap_and_writes_nothing(
    nvml: NvmlBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(index: int, cap_w: float) -> None:
        raise AssertionError(f"a dry run wrote {cap_w} W to device {index}")

    monkeypatch.setattr(nvml, "set_power_cap_w", refuse)
    devices = nvml.discover()
    device = devices[0]
    limits = device.capabilities.power_limits
    before = nvml.power_cap_w(device.index)
    if limits is None or before is None:
        pytest.skip(f"{device.device_id} reports no power limits")
    # A cap inside the device's range and 50 W away from the enforced one.
    target = before - 50.0 if before - 50.0 >= limits.min_w else min(before + 50.0, limits.max_w)
    priv, _ = generate_keypair(tmp_path / "keys")
    signer = Signer.from_file(priv)
    verifier = ActionVerifier(
        load_public_keys(tmp_path / "keys"),
        HOST,
        time.time_ns,
        JsonSeqStore(tmp_path / "seq.json", HOST),
    )
    act = Actuator(
        HOST,
        [(nvml, d) for d in devices],
        verifier,
        AuditLog(tmp_path / "audit.jsonl"),
        load_weights_path=tmp_path / "load-weights.json",
        dry_run=True,
    )
    now = time.time_ns()
    action = Action(
        action_id=f"gpu-test-{now}",
        host_id=HOST,
        seq=1,
        kind="set_power_cap",
        device_id=device.device_id,
        cap_w=target,
        issued_ts_ns=now,
        expires_ts_ns=now + 60 * 10**9,
        issuer="test",
        key_id=signer.key_id,
    )
    [result] = act.handle(signer.sign(action))
    assert result.outcome == "dry_run", result.reason
    assert result.previous_cap_w == pytest.approx(before)
    assert result.new_cap_w == pytest.approx(target)
    assert nvml.power_cap_w(device.index) == pytest.approx(before)
    assert verify(tmp_path / "audit.jsonl").ok


def test_the_agent_with_no_broker_buffers_every_real_sample(
    nvml: NvmlBackend, tmp_path: Path
) -> None:
    n_devices = len(nvml.discover())
    ticks = 10
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELPILOT_")}
    env.update(
        ACCELPILOT_HOST_ID=HOST,
        ACCELPILOT_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:9",  # the discard port: nothing listens
        ACCELPILOT_AGENT__BUFFER_DIR=str(tmp_path / "state"),
        ACCELPILOT_AGENT__METRICS_PORT="0",
    )
    cli = [sys.executable, "-m", "accelpilot.cli", "agent", "-b", "nvml", "--dry-run"]
    run = subprocess.run(
        [*cli, "--ticks", str(ticks), "--interval", "0.2", "-l", "warning"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    buffer = DiskBuffer(tmp_path / "state" / "samples", max_bytes=16 * 1024 * 1024)
    samples = [codec.decode(HostSample, r.value) for r in buffer.peek(max_records=100)]
    assert len(samples) == ticks
    assert [s.seq for s in samples] == sorted({s.seq for s in samples})
    for s in samples:
        assert s.host_id == HOST
        assert s.device_ids == [f"{HOST}/gpu{i}" for i in range(n_devices)]
        assert set(s.device_kinds) == {"gpu"}
        assert all(p is not None and p > 0 for p in s.metrics["power_w"])
