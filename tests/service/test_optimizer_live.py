"""The live optimizer for real: two sim agents and the stream worker on the real broker; the
optimizer reads the worker's aggregates and, in auto mode, caps change and energy per unit of
work falls; in advise mode nothing reaches fleet.actions and recommendations are recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from accelpilot.config import Settings
from accelpilot.optimizer.live import LiveOptimizer, run_optimizer
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS, SAMPLES
from accelpilot.signing import generate_keypair
from tests.conftest import write_config
from tests.reaper import reaped

pytestmark = [pytest.mark.service, pytest.mark.slow]

SCENARIO = "demo-fleet"  # hosts node0..node3; two of them run here
HOSTS = ("node0", "node1")
WINDOW_S = 2.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELPILOT_")}
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return reaped(
        subprocess.Popen(
            [sys.executable, "-m", "accelpilot.cli", *args],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _read_all(settings: Settings, topic: str, settle_s: float = 2.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[bytes] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < settle_s:
            batch = consumer.poll(timeout_ms=300)
            for records in batch.values():
                got.extend(r.value for r in records)
            if batch:
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return got


def _fleet(settings: Settings, tmp_path: Path, keys: Path) -> list[subprocess.Popen[bytes]]:
    fast = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"windows_s": (WINDOW_S,), "allowed_lateness_s": 0.5}
            )
        }
    )
    procs = [
        _start(
            [
                "worker",
                "--config",
                str(write_config(fast, tmp_path / "worker.toml")),
                "-l",
                "warning",
            ],
            _env(),
            tmp_path / "worker.log",
        )
    ]
    config = write_config(settings, tmp_path / "agent.toml")
    for host in HOSTS:
        procs.append(
            _start(
                [
                    "agent",
                    "--config",
                    str(config),
                    "-b",
                    "sim",
                    "--scenario",
                    SCENARIO,
                    "--interval",
                    "0.2",
                    "-l",
                    "warning",
                ],
                _env(
                    ACCELPILOT_HOST_ID=host,
                    ACCELPILOT_AGENT__BUFFER_DIR=str(tmp_path / host),
                    ACCELPILOT_AGENT__PUBLIC_KEYS=str(keys),
                    ACCELPILOT_AGENT__METRICS_PORT="0",
                ),
                tmp_path / f"{host}.log",
            )
        )
    return procs


def _run_optimizer(
    settings: Settings, mode: str, key: Path, tmp_path: Path, seconds: float
) -> LiveOptimizer:
    stop = threading.Event()
    box: dict[str, LiveOptimizer] = {}

    def main() -> None:
        box["opt"] = run_optimizer(
            settings,
            load_bundled_scenario(SCENARIO),
            mode,  # type: ignore[arg-type]
            key,
            stop,
            hosts=HOSTS,
            recommendations_path=tmp_path / "recommendations.jsonl",
            window_s=WINDOW_S,
            group_id=f"opt-{mode}-{tmp_path.name}",
            window_grace_s=1.0,
            anomaly_hold_s=10.0,
        )

    t = threading.Thread(target=main, daemon=True)
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(timeout=30)
    return box["opt"]


def _energy_per_unit(samples: list[HostSample], t0: int, t1: int, host: str) -> float:
    """Σ power_w / Σ work_rate over ``host``'s GPUs' samples in [t0, t1)."""
    power = work = 0.0
    for s in samples:
        if t0 <= s.ts_ns < t1 and s.host_id == host:
            gpus = [i for i, d in enumerate(s.device_ids) if "gpu" in d]
            power += sum(s.metrics["power_w"][i] or 0.0 for i in gpus)
            work += sum(s.metrics["work_rate"][i] or 0.0 for i in gpus)
    return power / work


def test_auto_mode_caps_fall_and_energy_per_unit_falls(
    service_settings: Settings, tmp_path: Path
) -> None:
    priv, _ = generate_keypair(tmp_path / "keys")
    procs = _fleet(service_settings, tmp_path, tmp_path / "keys")
    try:
        time.sleep(8)  # worker joins, agents discover and subscribe
        for p in procs:
            assert p.poll() is None, [f.read_text()[-2000:] for f in tmp_path.glob("*.log")]
        t_start = time.time_ns()
        opt = _run_optimizer(service_settings, "auto", priv, tmp_path, 45)
        t_end = time.time_ns()
    finally:
        for p in procs:
            _stop(p)
    print("counters", opt.counters.as_dict())
    actions = [codec.decode(Action, b) for b in _read_all(service_settings, ACTIONS)]
    results = [codec.decode(ActionResult, b) for b in _read_all(service_settings, ACTION_RESULTS)]
    samples = [codec.decode(HostSample, b) for b in _read_all(service_settings, SAMPLES)]
    assert actions and {a.host_id for a in actions} <= set(HOSTS)
    assert all(a.mode == "auto" and a.issuer == "optimizer:learned" for a in actions)
    applied = [r for r in results if r.outcome == "applied"]
    assert len(applied) >= 5, Counter_str(results)
    assert opt.counters.outcomes["applied"] >= 1  # the optimizer read the results back
    capped = {
        s.device_ids[i]
        for s in samples
        if s.ts_ns > t_start
        for i, c in enumerate(s.metrics["cap_w"])
        if c is not None and c < 0.97 * (700 if "gpu" in s.device_ids[i] else 360)
    }
    assert len(capped) >= 4, capped
    span = t_end - t_start
    # node0's GPUs serve train-llm, whose demand and phase stay constant over the run (the
    # scenario's first 300 ticks); serve-chat's demand (node1) drops at tick 240, which raises
    # its J/unit whatever the optimizer does, so it is printed, not asserted.
    fig = {
        h: (
            _energy_per_unit(samples, t_start - 5 * 10**9, t_start + 5 * 10**9, h),
            _energy_per_unit(samples, t_end - 15 * 10**9, t_end, h),
        )
        for h in HOSTS
    }
    print("energy per unit of work (before, after) J/unit:", fig)
    before, after = fig["node0"]
    assert span > 0 and after < 0.95 * before, fig


def Counter_str(results: list[ActionResult]) -> str:
    from collections import Counter

    return str(Counter((r.outcome, r.reason.split(":")[0]) for r in results))


def test_advise_mode_records_recommendations_and_sends_no_action(
    service_settings: Settings, tmp_path: Path
) -> None:
    priv, _ = generate_keypair(tmp_path / "keys")
    procs = _fleet(service_settings, tmp_path, tmp_path / "keys")
    try:
        time.sleep(8)
        opt = _run_optimizer(service_settings, "advise", priv, tmp_path, 20)
    finally:
        for p in procs:
            _stop(p)
    print("counters", opt.counters.as_dict())
    assert _read_all(service_settings, ACTIONS, settle_s=1.0) == []
    lines = (tmp_path / "recommendations.jsonl").read_bytes().splitlines()
    recs = [codec.decode(Action, line) for line in lines]
    assert recs and opt.counters.recommendations == len(recs)
    assert all(r.mode == "advise" and r.signature for r in recs)
    caps = [r for r in recs if r.kind == "set_power_cap"]
    assert caps and any("expected savings" in r.reason and "J/unit" in r.reason for r in caps)
