"""Two workers in one consumer group share the stream; one is SIGKILLed mid-stream and restarted.
Every sample's aggregate contribution must be in InfluxDB exactly once, every sample point must
be there, and no alert may be reported twice (one id per fault episode)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from accelpilot.config import Settings, load_settings
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import ALERTS
from accelpilot.stack.influxdb import influxql
from tests.service.kafka_io import consume
from tests.service.pipeline_checks import (
    SteadyPublisher,
    count_device_samples,
    device_windows_in_influx,
    expected_device_windows,
    fleet_ticks,
    wait_until,
)
from tests.service.test_first_slice import _start_worker

pytestmark = [pytest.mark.service, pytest.mark.slow]

TICKS = 900  # 15 min of event time (the demo fleet's faults at 8, 12, 16, 22, 400, 700 s)
TICKS_PER_S = 10.0  # published 10x faster than real time
# Hosts on every partition of 3: the demo fleet has node0..node3 on partitions 0 and 2 only.
SYNTHETIC_HOSTS = ("edge0", "edge1", "edge2", "edge3")


def _worker(settings: Settings, run_dir: Path) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    own = load_settings(
        kafka=settings.kafka.model_dump(),
        influx=settings.influx.model_dump(),
        worker={**settings.worker.model_dump(), "data_dir": str(run_dir / "data")},
    )
    return _start_worker(own, run_dir, log_level="info")  # restores are logged


def _kill(worker: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, sig)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_sigkilled_worker_of_two_restarts_and_every_contribution_lands_exactly_once(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings
    w = settings.worker
    start_ns = (time.time_ns() - (TICKS + 60) * 10**9) // 60 // 10**9 * 60 * 10**9
    logs = {name: tmp_path / name / "worker.log" for name in ("a", "a-restarted", "b")}
    workers = {name: _worker(settings, tmp_path / name) for name in ("a", "b")}

    def alive() -> None:
        for name, proc in workers.items():
            assert proc.poll() is None, f"worker {name} died:\n" + logs[name].read_text()[-3000:]

    publisher = SteadyPublisher(
        settings, fleet_ticks(start_ns, SYNTHETIC_HOSTS), TICKS_PER_S, TICKS
    )
    started = time.monotonic()
    try:
        publisher.start()
        publisher.wait_ticks(TICKS * 4 // 10)  # event time 360 s: mid-stream
        alive()
        _kill(workers.pop("a"))  # no shutdown, no flush, no commit
        killed_at_tick = publisher.ticks_sent
        publisher.wait_ticks(TICKS * 5 // 10)
        workers["a-restarted"] = _worker(settings, tmp_path / "a-restarted")
        restarted_at_tick = publisher.ticks_sent
        published = publisher.finish()
        published_s = time.monotonic() - started

        want = expected_device_windows(published, w.windows_s, w.allowed_lateness_s)
        want_points = sum(len(s.device_ids) for s in published)
        got: dict[tuple[str, str, int], int] = {}

        def landed() -> bool:
            nonlocal got
            got = device_windows_in_influx(settings)
            return got == want and count_device_samples(settings) == want_points

        # The killed worker's partitions wait for its session to expire (60 s), then replay.
        wait_until(landed, 150, alive)
        settled_s = time.monotonic() - started
        # Every check runs, then one assertion names every problem found.
        problems = []
        missing = {k: v for k, v in want.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if k not in want}
        if missing or extra:
            problems.append(
                f"{len(missing)} of {len(want)} device windows wrong or missing (want, got): "
                f"{sorted((k, v, got.get(k)) for k, v in missing.items())[:6]}; "
                f"{len(extra)} unexpected: {sorted(extra.items())[:6]}; "
                + _diagnose(settings, published, missing, start_ns)
            )
        # Every sample's contribution exactly once: the windows' counts add up to the samples.
        for tag in sorted({t for _, t, _ in want}):
            closed = sum(v for (_, t, _), v in got.items() if t == tag)
            expected = sum(v for (_, t, _), v in want.items() if t == tag)
            if closed != expected:
                problems.append(f"{tag} windows count {closed} device-samples, want {expected}")
        if (points := count_device_samples(settings)) != want_points:
            problems.append(f"{points} device_sample points, want {want_points}")

        # No duplicate alerts: one id per (kind, device) episode on fleet.alerts and in InfluxDB.
        alerts = [
            codec.decode(Alert, raw)
            for raw in consume(settings, ALERTS, lambda got: False, 15)  # all there by now
        ]
        firing = [a for a in alerts if a.state == "firing"]
        faults = {
            ("thermal", "node1/gpu3"),
            ("thermal", "node2/gpu1"),
            ("device_silent", "node3/gpu6"),
        }
        if not_raised := faults - {(a.kind, a.device_id) for a in firing}:
            problems.append(f"no alert for the injected faults {sorted(not_raised)}")
        ids_by_episode: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for a in firing:
            ids_by_episode[(a.kind, a.host_id, a.device_id or "-")].add(a.id)
        episodes = _episodes_in_influx(settings)
        for where, by_episode in (("fleet.alerts", ids_by_episode), ("InfluxDB", episodes)):
            if dup := {k: len(v) for k, v in by_episode.items() if len(v) > 1}:
                problems.append(f"alerts reported more than once in {where} (ids): {dup}")
                seen = [
                    (a.kind, a.device_id, a.id[:8], a.state, a.started_ts_ns, a.ts_ns)
                    for a in alerts
                    if (a.kind, a.host_id, a.device_id or "-") in dup
                ]
                problems.append(f"  their alerts (kind, device, id, state, started, ts): {seen}")
                hosts = {h for _, h, _ in dup}
                for name, path in logs.items():
                    lines = path.read_text().splitlines() if path.exists() else []
                    problems += [
                        f"  {name}: {line[-160:]}"
                        for line in lines
                        if "partitions" in line or any(f"{h}: detection" in line for h in hosts)
                    ]
        if set(episodes) != set(ids_by_episode):
            problems.append(
                f"alert episodes differ: InfluxDB {sorted(episodes)}, "
                f"fleet.alerts {sorted(ids_by_episode)}"
            )
        alive()
        summary = (
            f"two workers: {len(published)} samples / {want_points} device-samples published "
            f"in {published_s:.1f} s; worker a SIGKILLed at tick {killed_at_tick}, restarted "
            f"at tick {restarted_at_tick}; settled after {settled_s:.1f} s; {len(want)} device "
            f"windows; {len(firing)} firing alerts in {len(ids_by_episode)} episodes"
        )
        print("\n" + summary + "".join(f"\n  problem: {p}" for p in problems))
        assert problems == [], summary + "\n" + "\n".join(problems)
    finally:
        publisher.finish(0)
        for proc in workers.values():
            _kill(proc, signal.SIGTERM)


def _episodes_in_influx(settings: Settings) -> dict[tuple[str, str, str], set[str]]:
    body = influxql(
        settings.influx.url,
        "SELECT id FROM alert WHERE firing = 1 GROUP BY kind, host, device",
        settings.influx.database,
    )
    out: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for series in body["results"][0].get("series", []):
        tags = series["tags"]
        out[(tags["kind"], tags["host"], tags["device"])].update(v[1] for v in series["values"])
    return dict(out)


def _diagnose(
    settings: Settings,
    published: list[HostSample],
    wrong: dict[tuple[str, str, int], int],
    start_ns: int,
) -> str:
    """For each wrong window: is the head or the tail of its samples missing? (``power_w_last``
    is the value of the window's last sample.) Also the host's partition."""
    from kafka.partitioner.default import murmur2

    out = Counter()
    for device, tag, win_start in wrong:
        window_ns = int(tag[:-1]) * 10**9
        host = device.split("/")[0]
        mine = [
            s
            for s in published
            if s.host_id == host
            and win_start <= s.ts_ns < win_start + window_ns
            and device in s.device_ids
        ]
        last = mine[-1].metrics["power_w"][mine[-1].device_ids.index(device)]
        body = influxql(
            settings.influx.url,
            f"SELECT power_w_last FROM device_agg WHERE device = '{device}' "
            f"AND \"window\" = '{tag}' AND time = {win_start}",
            settings.influx.database,
        )
        series = body["results"][0].get("series")
        got_last = series[0]["values"][0][1] if series else None
        part = (murmur2(host.encode()) & 0x7FFFFFFF) % settings.kafka.partitions
        where = "tail kept" if got_last == last else "tail missing"
        out[(host, part, tag, (win_start - start_ns) // 10**9, where)] += 1
    return "by (host, partition, window, start s, which end): " + repr(sorted(out.items()))
