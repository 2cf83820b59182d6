"""The agent's sampling loop without a broker: samples carry the agent's own health, go to the
disk buffer, and /metrics reports depth, drops and ticks."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from accelpilot.collectors.agent import Agent
from accelpilot.collectors.agent_metrics import AgentMetrics
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.buffered_publisher import BufferedPublisher
from accelpilot.collectors.discovery import discover
from accelpilot.collectors.disk_buffer import DiskBuffer
from accelpilot.config import load_settings
from accelpilot.errors import ConfigError
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas import codec
from accelpilot.schemas.samples import HostSample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ticks_are_buffered_with_health_and_exported(tmp_path: Path) -> None:
    settings = load_settings(host_id="node0", agent={"interval_s": 0.05, "metrics_port": 0})
    backend = SimBackend(SimFleet(load_bundled_scenario("two-phase-8gpu")), "node0", advances=True)
    buffer = DiskBuffer(tmp_path / "samples", max_bytes=1 << 20)
    # Not started: nothing is sent, as while the broker is away; samples wait on disk.
    publisher = BufferedPublisher("127.0.0.1:1", "t", buffer)
    metrics = AgentMetrics()
    agent = Agent(settings, discover([backend]), publisher, metrics=metrics)
    port = _free_port()
    metrics.serve(port)
    agent.run(max_ticks=5)
    assert buffer.depth == 5
    records = buffer.peek(10)
    samples = [codec.decode(HostSample, r.value) for r in records]
    assert [s.seq for s in samples] == list(range(samples[0].seq, samples[0].seq + 5))
    assert samples[-1].agent is not None and samples[-1].agent.buffer_depth == 4
    assert samples[-1].agent.oldest_buffered_ts_ns == samples[0].ts_ns
    assert {r.key for r in records} == {b"node0"}
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    assert values["accelpilot_agent_ticks_total"] == 5
    assert values["accelpilot_agent_buffer_depth"] == 5
    assert values["accelpilot_agent_devices"] == 8
    assert values["accelpilot_agent_dropped_samples_total"] == 0
    assert values["accelpilot_agent_broker_connected"] == 0
    buffer.close()


def test_a_metrics_port_in_use_is_a_config_error_naming_the_field(busy_port: int) -> None:
    with pytest.raises(ConfigError, match=r"agent\.metrics_port: .*in use.*or 0"):
        AgentMetrics().serve(busy_port)
