"""`accelpilot bench pipeline`: the stream worker against the real broker and InfluxDB.

Phases, all in one run, each on its own topics and database (removed at the end):

1. **Throughput (saturated).** Pre-encoded host ticks (``hosts`` x ``devices`` GPUs x ``ticks``)
   are published into ``telemetry.samples`` *before* the worker starts, so the generator cannot be
   the bottleneck; then ONE worker process (``python -m accelpilot.cli worker``) drains the
   backlog. The rate is counted from the first to the last ``device_sample`` point visible in
   InfluxDB (``count(seq)``), the CPU from ``psutil`` over the same span (children included).
   With ``worker.raw_samples = "every"`` a raw point stands for ``raw_every_s / interval_s``
   device-samples, and the backlog is stamped so that its last tick is one that gets raw lines
   (the last point then marks the end of the backlog). The backlog ends more than the largest
   window before the clock, so every window it completes is closed during the drain (a host
   that far behind is closed at once, not over ``close_spreads_s``) and counted in its CPU.
   The CPU of the stack's own InfluxDB and Kafka processes (``accelpilot stack up``; their pid
   files) is measured over the same span (``services_cpu_utilization``), so the figures say
   where this machine's cores went.
2. **InfluxDB alone.** The worker's own writes for the first ticks of the backlog (what
   :class:`~accelpilot.streams.batch_stages.BatchStages` produces: raw sample lines, device and
   host aggregates, anomaly and alert lines; one write per batch, as the worker's committer does)
   sent straight from this process (sync client) into a scratch database while nothing else
   runs, with InfluxDB's own CPU per million device-samples; ``raw_only`` = the raw sample lines
   alone (the figure this phase reported before 2026-12-07, which left out the aggregates, the
   costlier lines per field).
3. **Latency (below saturation).** Ticks published at ``latency_load`` x the measured rate (or
   at ``latency_rate`` device-samples/s when given: A/Bs at the same offered load) with
   ``ts_ns`` = send time; sample->InfluxDB from polling marker devices' newest points, and
   sample->alert from thermal faults (temp 95 degC + throttle bit 0x40; the thermal channel fires
   on the 2nd such sample) injected into a few hosts, measured to the alert's arrival on
   ``fleet.alerts`` (``alert.ts_ns`` is the triggering sample's stamp).
4. **Naive design.** One JSON Kafka message per metric per device, one influxdb-client ``Point``
   per message (``streams/bench_naive.py``), measured the same way as phase 1.
5. **Floors**, to say where the time goes: ``stages`` = the worker's pure per-batch code
   (:class:`~accelpilot.streams.batch_stages.BatchStages`, payload encoding included) in this
   process per CPU second, no Kafka, no InfluxDB (``stages_raw_every_10s``: the same with one
   raw sample line per device per 10 s, ``worker.raw_samples = "every"``); ``faust_noop`` = a
   faust agent that only acks (``noack_take`` batching) draining the same backlog, in its own
   process;
   ``aiokafka_getmany`` = the same backlog read by a bare aiokafka consumer in this process.

All processes share this machine's cores (broker, InfluxDB, worker, this process): the figures
include that contention and ``loadavg`` is reported alongside.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings, write_toml
from accelpilot.schemas import codec
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import ALERTS, ALL_TOPICS, SAMPLES
from accelpilot.stack.influxdb import influxql
from accelpilot.stack.kafka import create_topics, delete_topics
from accelpilot.streams import gc_settings
from accelpilot.streams.batch_stages import close_spreads_s, raw_every_ns, raw_line_due
from accelpilot.streams.bench_naive import naive_messages
from accelpilot.streams.bench_profile import py_spy_argv, summarize

Progress = Callable[[str], None]
FAULT_TEMP_C = 95.0
FAULT_MASK = float(0x40)  # HW thermal slowdown
PROBE_INTERVAL_S = 0.2


# -- helpers ----------------------------------------------------------------------------------
def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELPILOT_")}
    return subprocess.Popen(
        argv,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _python_of(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> psutil.Process:
    """The Python process itself: ``proc``, or its child when py-spy runs it (--profile), so
    that CPU figures never include the profiler."""
    ps = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout_s
    while "py-spy" in Path(ps.exe()).name and time.monotonic() < deadline:
        children = ps.children()
        if children:
            return children[0]
        time.sleep(0.05)
    return ps


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb(proc: psutil.Process) -> float | None:
    """The process's peak resident memory so far (Linux's VmHWM), None where unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def services(settings: Settings) -> dict[str, psutil.Process]:
    """The stack's own server processes (``accelpilot stack up``), by name, to measure their CPU
    beside the worker's; those it does not run (services elsewhere) are left out."""
    from accelpilot.stack.manager import Stack

    stack = Stack(settings)
    out = {}
    for name, pid in (("influxdb", stack.influx.pid()), ("kafka", stack.kafka.pid())):
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                out[name] = psutil.Process(pid)
    return out


def _services_cpu_s(procs: Mapping[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        with contextlib.suppress(psutil.Error):
            out[name] = _cpu_s(proc)
    return out


def _count(url: str, db: str, field: str) -> int:
    body = influxql(url, f'SELECT count("{field}") FROM device_sample', db)
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _producer(bootstrap: str, compression: str | None) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="accelpilot-bench",
        acks=1,
        compression_type=compression,
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def _publish(producer: Any, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Send all (key, value) pairs and flush; return the wall seconds it took."""
    t0 = time.perf_counter()
    send = producer.send
    for key, value in messages:
        send(topic, key=key, value=value)
    producer.flush(timeout=300)
    return time.perf_counter() - t0


def _drain(
    proc: subprocess.Popen[bytes],
    url: str,
    db: str,
    field: str,
    want: int,
    timeout_s: float,
    log: Path,
    samples_per_point: float = 1.0,
    procs: Mapping[str, psutil.Process] | None = None,
) -> dict[str, Any]:
    """Wait until ``want`` points are visible; rate and CPU from the first to the last one,
    each point standing for ``samples_per_point`` device-samples; ``procs`` (the stack's
    services) have their CPU measured over the same span."""
    ps = _python_of(proc)
    procs = procs or {}
    spawned = (time.monotonic(), 0, _cpu_s(ps), _services_cpu_s(procs))
    first: tuple[float, int, float, dict[str, float]] | None = None
    deadline = time.monotonic() + timeout_s
    n = 0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {log.read_text()[-2000:]}")
        n = _count(url, db, field)
        now, cpu, svc = time.monotonic(), _cpu_s(ps), _services_cpu_s(procs)
        if n > 0 and first is None:
            first = (now, n, cpu, svc)
        if n >= want or now > deadline:
            break
        time.sleep(0.1)
    assert first is not None, "nothing reached InfluxDB"
    # Everything landed in the first visible batch (tiny runs): fall back to the span since the
    # process started, start-up included.
    includes_startup = first[1] >= n
    t0, n0, cpu0, svc0 = spawned if includes_startup else first
    span = max(now - t0, 1e-6)
    done = (n - n0) * samples_per_point
    svc_s = {k: svc[k] - svc0[k] for k in svc if k in svc0}
    return {
        "counted": n,
        "wanted": want,
        "device_samples_per_point": samples_per_point,
        "span_s": round(span, 3),
        "device_samples_per_s": round(done / span, 1),
        "cpu_s_per_million": round((cpu - cpu0) / max(done, 1) * 1e6, 2),
        "cpu_utilization": round((cpu - cpu0) / span, 3),
        "includes_startup": includes_startup,
        "peak_rss_mb": peak_rss_mb(ps),
        "services_cpu_utilization": {k: round(v / span, 3) for k, v in svc_s.items()},
        "services_cpu_s_per_million": {
            k: round(v / max(done, 1) * 1e6, 2) for k, v in svc_s.items()
        },
    }


def _with_fault(sample: HostSample, device: int, on: bool) -> HostSample:
    metrics = dict(sample.metrics)
    n = len(sample.device_ids)
    mask = [0.0] * n
    if on:
        temp = list(metrics["temp_c"])
        temp[device] = FAULT_TEMP_C
        metrics["temp_c"] = temp
        mask[device] = FAULT_MASK
    metrics["throttle_reasons_mask"] = mask
    return msgspec.structs.replace(sample, metrics=metrics)


# -- the benchmark ----------------------------------------------------------------------------
def bench_pipeline(
    settings: Settings,
    *,
    hosts: int = 1000,
    devices: int = 8,
    ticks: int = 60,
    latency_s: float = 15.0,
    latency_load: float = 0.5,
    latency_rate: float | None = None,
    fault_hosts: int = 5,
    naive_hosts: int = 100,
    naive_ticks: int = 10,
    compression: str | None = "gzip",
    timeout_s: float = 300.0,
    profile: Path | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Run every phase and return the figures (see the module docstring)."""
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"accelpilot-bench-{tag}-"))
    run = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench{tag}."}),
            "influx": settings.influx.model_copy(update={"database": f"bench_{tag}"}),
            "worker": settings.worker.model_copy(
                update={"app_id": f"bench-{tag}", "data_dir": tmp / "worker"}
            ),
        }
    )
    bootstrap, url = run.kafka.bootstrap_servers, run.influx.url
    db, naive_db = run.influx.database, f"bench_{tag}_naive"
    alone_dbs = (f"bench_{tag}_alone", f"bench_{tag}_raw")
    naive_topic = run.topic("bench.naive-samples")
    topics = [run.topic(t) for t in ALL_TOPICS] + [naive_topic]
    result: dict[str, Any] = {
        "run_id": tag,
        "hosts": hosts,
        "devices": devices,
        "ticks": ticks,
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    procs: list[subprocess.Popen[bytes]] = []
    producer = None
    try:
        create_topics(bootstrap, topics, partitions=run.kafka.partitions)
        for name in (db, naive_db, *alone_dbs):
            influxql(url, f'CREATE DATABASE "{name}"')
        producer = _producer(bootstrap, compression)
        # -- payloads, pre-encoded (tick-major: one batch spans the fleet, as in production)
        t0 = time.perf_counter()
        # The last tick on a raw_every_s boundary: with raw_samples "every" it is a raw one.
        # And more than the largest window behind the clock: the worker then closes each
        # window the drain completes at once (WindowAggregator.close_due), inside the measured
        # span; stamped nearer, up to close_spreads_s of that work came after the last point.
        every_ns = raw_every_ns(run.worker)
        period_ns = every_ns or 10**9
        behind_ns = round((5 + max(run.worker.windows_s)) * 1e9)
        start_ns = (time.time_ns() - behind_ns) // period_ns * period_ns - (ticks - 1) * 10**9
        per_host = [
            list(
                synthetic_samples(
                    f"h{h:05d}", n_devices=devices, n_ticks=ticks, start_ns=start_ns, seed=h
                )
            )
            for h in range(hosts)
        ]
        messages = [
            (per_host[h][k].host_id.encode(), codec.encode(per_host[h][k]))
            for k in range(ticks)
            for h in range(hosts)
        ]
        gen_s = time.perf_counter() - t0
        n_samples = hosts * devices * ticks
        raw_points = devices * sum(raw_line_due(s, every_ns) for h in per_host for s in h)
        progress(f"generated {len(messages)} messages ({n_samples} device-samples) in {gen_s:.1f}s")

        # -- phase 1: backlog, then one worker drains it
        pub_s = _publish(producer, run.topic(SAMPLES), messages)
        result["generator"] = {
            "messages": len(messages),
            "bytes_per_message": round(sum(len(v) for _, v in messages) / len(messages), 1),
            "encode_s": round(gen_s, 2),
            "publish_messages_per_s": round(len(messages) / pub_s, 1),
            "publish_device_samples_per_s": round(n_samples / pub_s, 1),
            "compression": compression,
            "acks": 1,
        }
        progress(f"published backlog at {len(messages) / pub_s:.0f} msg/s; starting the worker")
        config = write_toml(run, tmp / "worker.toml")
        worker_log = tmp / "worker.log"
        argv = [sys.executable, "-m", "accelpilot.cli", "worker", "--config", str(config)]
        argv += ["-l", "warning"]
        spy = None if profile is None else py_spy_argv(profile)
        if profile is not None and spy is None:
            progress("py-spy not found (pip install py-spy): running without a profile")
        worker = _spawn((spy or []) + argv, worker_log)
        procs.append(worker)
        stack_procs = services(settings)
        ours = _drain(
            worker,
            url,
            db,
            "seq",
            raw_points,
            timeout_s,
            worker_log,
            n_samples / raw_points,
            stack_procs,
        )
        ours["batch_max"] = run.worker.batch_max
        ours["raw_samples"] = run.worker.raw_samples
        ours["influx_writes_in_flight"] = run.worker.influx_writes_in_flight
        result["ours"] = ours
        if spy is not None:  # the drain only: py-spy writes its file once the worker exits
            _python_of(worker).terminate()
            worker.wait(timeout=60)
            assert profile is not None
            result["profile"] = summarize(profile)
            worker = _spawn(argv, worker_log)
            procs.append(worker)
        progress(f"ours: {ours['device_samples_per_s']:.0f} device-samples/s")

        # -- phase 2: InfluxDB alone on the worker's own writes, from this process
        alone = _influx_alone(run, alone_dbs, per_host, ticks, stack_procs.get("influxdb"))
        result["influxdb_alone"] = alone
        progress(
            f"influxdb alone: {alone['device_samples_per_s']:.0f}/s on the worker's lines, "
            f"{alone['raw_only']['device_samples_per_s']:.0f}/s on raw sample lines only"
        )

        # -- phase 3: latency below saturation
        rate = latency_rate or latency_load * ours["device_samples_per_s"]
        log_at = worker_log.stat().st_size
        result["latency"] = _latency(
            run, producer, worker, per_host, rate, latency_s, fault_hosts, progress, stack_procs
        )
        # The worker's back-pressure warnings during that phase (streams/ingest_loop.py).
        with worker_log.open("rb") as f:
            f.seek(log_at)
            result["latency"]["reader_waits"] = [
                line.strip()
                for line in f.read().decode(errors="replace").splitlines()
                if "reading waited" in line
            ][:20]
        _stop(worker)

        # -- phase 4: the naive design
        naive_hosts, naive_ticks = min(naive_hosts, hosts), min(naive_ticks, ticks)
        naive_msgs = [
            m
            for k in range(naive_ticks)
            for h in range(naive_hosts)
            for m in naive_messages(per_host[h][k])
        ]
        n_naive = naive_hosts * devices * naive_ticks
        naive_pub_s = _publish(producer, naive_topic, naive_msgs)
        last_metric = list(per_host[0][0].metrics)[-1]
        naive_log = tmp / "naive.log"
        naive = _spawn(
            [
                *(sys.executable, "-m", "accelpilot.streams.bench_naive"),
                *("--bootstrap", bootstrap, "--topic", naive_topic, "--url", url),
                *("--group", f"bench-naive-{tag}"),
                *("--bucket", f"{naive_db}/{run.influx.retention_policy}"),
                *("--token", run.influx.token.get_secret_value()),
            ],
            naive_log,
        )
        procs.append(naive)
        naive_fig = _drain(naive, url, naive_db, last_metric, n_naive, timeout_s, naive_log)
        naive_fig["messages"] = len(naive_msgs)
        naive_fig["publish_messages_per_s"] = round(len(naive_msgs) / naive_pub_s, 1)
        naive_fig["publish_device_samples_per_s"] = round(n_naive / naive_pub_s, 1)
        result["naive"] = naive_fig
        _stop(naive)
        result["ratio"] = {
            "throughput_ours_over_naive": round(
                ours["device_samples_per_s"] / max(naive_fig["device_samples_per_s"], 1e-9), 1
            ),
            "cpu_naive_over_ours": round(
                naive_fig["cpu_s_per_million"] / max(ours["cpu_s_per_million"], 1e-9), 1
            ),
            "publish_ours_over_naive": round(
                result["generator"]["publish_device_samples_per_s"]
                / naive_fig["publish_device_samples_per_s"],
                1,
            ),
        }
        # -- phase 5: floors
        result["floors"] = {
            "stages": _stages(run, per_host),
            # The same with worker.raw_samples = "every" (one raw sample per device per 10 s).
            "stages_raw_every_10s": _stages(
                run.model_copy(
                    update={
                        "worker": run.worker.model_copy(
                            update={"raw_samples": "every", "raw_every_s": 10.0}
                        )
                    }
                ),
                per_host,
            ),
            "faust_noop": _faust_noop(run, tmp, len(messages), devices, timeout_s),
            "aiokafka_getmany": _aiokafka_getmany(run, len(messages), devices),
        }
        progress(
            "floors (device-samples/s): "
            + ", ".join(f"{k} {v.get('device_samples_per_s')}" for k, v in result["floors"].items())
        )
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        alerts = result["latency"]["sample_to_alert_ms"]
        result["goal"] = {
            "device_samples_per_s_per_worker": 100_000,
            "met_throughput": ours["device_samples_per_s"] >= 100_000,
            "p99_sample_to_alert_ms": 500,
            # Below saturation (the condition): the latency phase's offered rate as a
            # fraction of the drain's; and every expected alert must have arrived.
            "latency_load": round(
                result["latency"]["offered_device_samples_per_s"]
                / max(ours["device_samples_per_s"], 1.0),
                3,
            ),
            "met_latency": (alerts["p99"] or 1e9) <= 500 and alerts["n"] >= alerts["expected"],
        }
        result["limit"] = _limit(result)
        return result
    finally:
        for proc in procs:
            _stop(proc)
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)
        with contextlib.suppress(Exception):
            delete_topics(bootstrap, topics)
        for name in (db, naive_db, *alone_dbs):
            with contextlib.suppress(Exception):
                influxql(url, f'DROP DATABASE "{name}"')
        shutil.rmtree(tmp, ignore_errors=True)


def _limit(result: dict[str, Any]) -> str:
    ours = result["ours"]
    alone = result["influxdb_alone"]
    influx, raw = alone["device_samples_per_s"], alone["raw_only"]["device_samples_per_s"]
    svc = ours.get("services_cpu_utilization", {})
    busy = ours["cpu_utilization"] + sum(svc.values())
    cores = result.get("cpu_count") or 1
    if ours["cpu_utilization"] >= 0.85:
        who = "the worker's own CPU (one core, saturated)"
    elif busy >= 0.85 * cores:
        who = f"this machine's {cores} cores, all busy"
    elif ours["device_samples_per_s"] >= 0.8 * influx:
        who = "InfluxDB's write rate"
    else:
        who = "waiting on InfluxDB and Kafka round trips (worker below one core, idle cores)"
    shares = ", ".join(f"{k} {v:.0%}" for k, v in svc.items())
    return (
        f"{who}: worker at {ours['cpu_utilization']:.0%} of a core"
        + (f" ({shares} of a core beside it)" if shares else "")
        + f", {ours['device_samples_per_s']:.0f}/s vs InfluxDB alone on the worker's lines "
        f"{influx:.0f}/s (raw sample lines only {raw:.0f}/s); "
        f"generator published {result['generator']['publish_device_samples_per_s']:.0f}/s "
        "before the worker started (not in the measured span)"
    )


def _worker_writes(run: Settings, per_host: list[list[HostSample]], ticks: int) -> list[list[str]]:
    """The InfluxDB lines the worker writes for the first ``ticks`` ticks, one list per batch:
    :class:`~accelpilot.streams.batch_stages.BatchStages` over batches of ``worker.batch_max``
    host-ticks, windows closed at once (every window of the span ends before now)."""
    from accelpilot.streams.batch_stages import BatchStages

    raws = [codec.encode(h[k]) for k in range(ticks) for h in per_host]
    stages = BatchStages(run.worker.model_copy(update={"close_spread_s": 0.0}))
    now_ns, step = time.time_ns(), run.worker.batch_max
    return [
        stages.run(raws[i : i + step], raws[i : i + step], now_ns).lines
        for i in range(0, len(raws), step)
    ]


def field_count(line: str) -> int:
    r"""Fields of one line-protocol line.

    >>> field_count('m,host=a\\ b x=1,y=2i 5'), field_count('m,t=1 a="1, 2",b=3 7')
    (2, 2)
    """
    if '"' not in line:
        return _UNESCAPED_SPACE.split(line)[1].count(",") + 1
    count, quoted, section, i = 0, False, 0, 0
    while i < len(line):  # string fields may hold commas and spaces
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c == '"' and section == 1:  # quotes are literal in tag values
            quoted = not quoted
        elif not quoted and c == " ":
            section += 1
            if section == 2:
                break
            count = 1
        elif not quoted and c == "," and section == 1:
            count += 1
        i += 1
    return count


_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")


def _write_alone(
    run: Settings,
    db: str,
    batches: Sequence[Sequence[str]],
    device_samples: int,
    influxd: psutil.Process | None,
) -> dict[str, Any]:
    """Write ``batches`` (one write each, sync client) and time it, with InfluxDB's CPU."""
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    client = InfluxDBClient(
        url=run.influx.url, token=run.influx.token.get_secret_value(), org=run.influx.org
    )
    cpu0 = _services_cpu_s({"influxdb": influxd} if influxd else {})
    try:
        api = client.write_api(write_options=SYNCHRONOUS)
        bucket = f"{db}/{run.influx.retention_policy}"
        t0 = time.perf_counter()
        for lines in batches:
            if lines:
                api.write(bucket=bucket, record="\n".join(lines), write_precision=WritePrecision.NS)
        dt = max(time.perf_counter() - t0, 1e-9)
    finally:
        client.close()
    cpu1 = _services_cpu_s({"influxdb": influxd} if influxd else {})
    n_lines = sum(len(b) for b in batches)
    fields = sum(field_count(line) for b in batches for line in b)
    out: dict[str, Any] = {
        "device_samples": device_samples,
        "lines": n_lines,
        "fields": fields,
        "fields_per_device_sample": round(fields / max(device_samples, 1), 2),
        "device_samples_per_s": round(device_samples / dt, 1),
        "lines_per_s": round(n_lines / dt, 1),
        "fields_per_s": round(fields / dt, 1),
    }
    if "influxdb" in cpu0 and "influxdb" in cpu1:
        cpu = cpu1["influxdb"] - cpu0["influxdb"]
        out["influxd_cpu_s_per_million"] = round(cpu / max(device_samples, 1) * 1e6, 2)
        out["influxd_cpu_utilization"] = round(cpu / dt, 3)
        out["influxd_cpu_us_per_field"] = round(cpu / max(fields, 1) * 1e6, 2)
    return out


def _influx_alone(
    run: Settings,
    dbs: tuple[str, str],
    per_host: list[list[HostSample]],
    ticks: int,
    influxd: psutil.Process | None,
) -> dict[str, Any]:
    """InfluxDB alone on the worker's writes for ``ticks`` ticks (``dbs[0]``), then on their
    raw sample lines only (``raw_only``, ``dbs[1]``)."""
    batches = _worker_writes(run, per_host, ticks)
    n = len(per_host) * len(per_host[0][0].device_ids) * ticks
    out = _write_alone(run, dbs[0], batches, n, influxd)
    out["lines_by_measurement"] = dict(
        Counter(line[: line.index(",")] for b in batches for line in b)
    )
    raw = [[line for line in b if line.startswith("device_sample,")] for b in batches]
    out["raw_only"] = _write_alone(run, dbs[1], raw, n, influxd)
    return out


def _stages(run: Settings, per_host: list[list[HostSample]]) -> dict[str, Any]:
    """The worker's pure per-batch code over the backlog's messages, per CPU second."""
    from accelpilot.streams.batch_stages import BatchStages

    ticks, devices = len(per_host[0]), len(per_host[0][0].device_ids)
    raws = [codec.encode(per_host[h][k]) for k in range(ticks) for h in range(len(per_host))]
    # Closes at once (close_spread_s 0): the same work, all of it inside the timed span.
    stages = BatchStages(run.worker.model_copy(update={"close_spread_s": 0.0}))
    batch = run.worker.batch_max
    now_ns = time.time_ns()
    payloads = 0
    with gc_settings.tuned():  # the worker's collector settings (streams/gc_settings.py)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(raws), batch):
            chunk = raws[i : i + batch]
            out = stages.run(chunk, chunk, now_ns)
            payloads += sum(
                len(codec.encode(p)) > 0 for p in (*out.alerts, *out.anomalies, *out.aggregates)
            )
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    n = len(raws) * devices
    return {
        "device_samples": n,
        "payloads": payloads,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "device_samples_per_s": round(n / cpu, 1),
        "cpu_s_per_million": round(cpu / n * 1e6, 2),
        "note": "per CPU second of this process (a loaded machine inflates wall time)",
    }


def _faust_noop(
    run: Settings, tmp: Path, events: int, devices: int, timeout_s: float
) -> dict[str, Any]:
    """A faust agent that only acks, draining the samples backlog (its own consumer group)."""
    out = tmp / "faust_noop.json"
    log = tmp / "faust_noop.log"
    proc = _spawn(
        [
            *(sys.executable, "-m", "accelpilot.streams.bench_pipeline", "faust-noop"),
            *("--bootstrap", run.kafka.bootstrap_servers, "--topic", run.topic(SAMPLES)),
            *("--events", str(events), "--partitions", str(run.kafka.partitions)),
            *("--batch", str(run.worker.batch_max), "--within", str(run.worker.batch_within_s)),
            *("--datadir", str(tmp / "faust_noop"), "--out", str(out)),
        ],
        log,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        _stop(proc)
    if not out.exists():
        return {"error": log.read_text()[-1000:]}
    fig = msgspec.json.decode(out.read_bytes())
    fig["device_samples_per_s"] = round(fig["events_per_s"] * devices, 1)
    return dict(fig)


def _faust_noop_main(argv: list[str]) -> None:
    import argparse
    import json

    import faust

    from accelpilot.streams.app import make_worker

    p = argparse.ArgumentParser(prog="bench_pipeline faust-noop")
    for name in ("--bootstrap", "--topic", "--datadir", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--within", type=float, required=True)
    args = p.parse_args(argv)
    app = faust.App(
        f"bench-noop-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=args.partitions,
        stream_wait_empty=False,
    )
    topic = app.topic(
        args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    state: dict[str, float] = {"n": 0}

    @app.agent(topic)
    async def noop(stream: Any) -> None:
        manual = stream.noack()
        async for events in manual.noack_take(args.batch, within=args.within):
            if "t0" not in state:
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            for event in events:
                await manual.ack(event)
            state["n"] += len(events)
            if state["n"] >= args.events:
                wall = time.perf_counter() - state["t0"]
                cpu = time.process_time() - state["c0"]
                fig = {
                    "events": state["n"],
                    "wall_s": round(wall, 3),
                    "events_per_s": round(state["n"] / wall, 1),
                    "cpu_us_per_event": round(cpu / state["n"] * 1e6, 1),
                    "cpu_utilization": round(cpu / wall, 3),
                }
                Path(args.out).write_text(json.dumps(fig))
                return

    make_worker(app, loglevel="warning").execute_from_commandline()


def _aiokafka_getmany(run: Settings, events: int, devices: int) -> dict[str, Any]:
    """The samples backlog read by a bare aiokafka consumer (its own group), this process."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def drain() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            run.topic(SAMPLES),
            bootstrap_servers=run.kafka.bootstrap_servers,
            group_id=f"bench-getmany-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            seen, n, t0, c0 = 0, 0, 0.0, 0.0
            deadline = time.monotonic() + 120
            while seen < events and time.monotonic() < deadline:
                got = await consumer.getmany(timeout_ms=200, max_records=5000)
                k = sum(len(v) for v in got.values())
                if k and not seen:
                    t0, c0 = time.perf_counter(), time.process_time()
                else:
                    n += k
                seen += k
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            await consumer.stop()
        return {
            "events": n,
            "events_per_s": round(n / wall, 1),
            "device_samples_per_s": round(n * devices / wall, 1),
            "cpu_us_per_event": round(cpu / max(n, 1) * 1e6, 1),
            "note": "timed from the first fetched batch (its events are not counted as work)",
        }

    return asyncio.run(drain())


def _latency(
    run: Settings,
    producer: Any,
    worker: subprocess.Popen[bytes],
    per_host: list[list[HostSample]],
    rate: float,
    duration_s: float,
    fault_hosts: int,
    progress: Progress,
    stack_procs: Mapping[str, psutil.Process] | None = None,
) -> dict[str, Any]:
    """Publish at ``rate`` device-samples/s with ts = send time; measure both latencies."""
    from kafka import KafkaConsumer, TopicPartition

    hosts, devices = len(per_host), len(per_host[0][0].device_ids)
    url, db = run.influx.url, run.influx.database
    topic = run.topic(SAMPLES)
    msgs_per_s = max(rate, 1000.0) / devices
    stop = threading.Event()
    # Per alert: (sample ts_ns, the alert record's Kafka timestamp in ms = when the worker sent
    # it, arrival ns): its latency, split into the worker's side and the delivery side.
    alert_times: list[tuple[int, int, int]] = []
    influx_lat: list[float] = []
    t_start_ns = time.time_ns()
    fault_hosts = min(fault_hosts, hosts)
    fault_set = {f"h{h:05d}" for h in range(fault_hosts)}
    probes = [f"h{h:05d}" for h in range(min(max(10, fault_hosts), hosts))]
    markers = probes
    # Partitions assigned by hand (no group join: on a loaded broker a join can take minutes),
    # positioned at the end before the first fault is sent.
    consumer = KafkaConsumer(bootstrap_servers=run.kafka.bootstrap_servers)
    alert_partitions = [
        TopicPartition(run.topic(ALERTS), p)
        for p in sorted(consumer.partitions_for_topic(run.topic(ALERTS)) or [])
    ]
    consumer.assign(alert_partitions)
    consumer.seek_to_end()
    for tp in alert_partitions:
        consumer.position(tp)

    def read_alerts() -> None:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=100).values():
                now_ns = time.time_ns()
                for r in records:
                    a = codec.decode(Alert, r.value)
                    if (
                        a.kind == "thermal"
                        and a.state == "firing"
                        and a.host_id in fault_set
                        and a.ts_ns >= t_start_ns
                    ):
                        alert_times.append((a.ts_ns, r.timestamp, now_ns))

    def poll_influx() -> None:
        regex = "|".join(markers)
        last = t_start_ns
        while not stop.is_set():
            body = influxql(
                url,
                f"SELECT seq FROM device_sample WHERE host =~ /^({regex})$/ "
                f"AND device =~ /gpu0$/ AND time > {last}",
                db,
            )
            now_ns = time.time_ns()
            for series in body["results"][0].get("series", []):
                for ts, _ in series["values"]:
                    influx_lat.append((now_ns - ts) / 1e6)
                    last = max(last, ts)
            time.sleep(0.02)

    # Warm-up: one tick of every host stamped now. It closes every window left open by the
    # backlog (a burst of aggregates); timing starts once its marker point is visible, so the
    # latencies are those of the steady state, not of that burst.
    warm_ns = time.time_ns()
    every_ns = raw_every_ns(run.worker)
    if every_ns is not None:  # a tick that gets raw lines: the next boundary
        warm_ns = (warm_ns // every_ns + 1) * every_ns
        time.sleep(max(warm_ns - time.time_ns(), 0) / 1e9)
    for h in range(hosts):
        s = msgspec.structs.replace(per_host[h][-1], ts_ns=warm_ns, seq=len(per_host[h]))
        producer.send(topic, key=s.host_id.encode(), value=codec.encode(s))
    producer.flush(timeout=60)
    t_warm = time.monotonic()
    while time.monotonic() - t_warm < 300:
        body = influxql(
            url,
            f"SELECT seq FROM device_sample WHERE host = '{per_host[hosts - 1][0].host_id}' "
            f"AND time >= {warm_ns}",
            db,
        )
        if body["results"][0].get("series"):
            break
        if worker.poll() is not None:
            raise RuntimeError("the worker exited during the latency warm-up")
        time.sleep(0.1)
    warmup_s = time.monotonic() - t_warm
    # The windows that tick completed close over the longest spread (close_spreads_s): wait for
    # that, and for the worker to go quiet (under a quarter of a core over half a second), at
    # most 60 s.
    ps, t_settle = _python_of(worker), time.monotonic()
    time.sleep(max(close_spreads_s(run.worker.close_spread_s, run.worker.windows_s)))
    while time.monotonic() - t_settle < 60:
        c0 = _cpu_s(ps)
        time.sleep(0.5)
        if _cpu_s(ps) - c0 < 0.125:
            break
    settle_s = time.monotonic() - t_settle
    progress(
        f"latency warm-up (windows left by the backlog closed) took {warmup_s:.1f}s, "
        f"then {settle_s:.1f}s for the worker to go quiet"
    )
    t_start_ns = time.time_ns()

    busy = _CoreSampler({"worker": _python_of(worker), **(stack_procs or {})})
    readers = [threading.Thread(target=f, daemon=True) for f in (read_alerts, poll_influx)]
    sampler = threading.Thread(target=busy.run, daemon=True)
    for t in (*readers, sampler):
        t.start()
    # Probe hosts (markers + fault hosts) tick every PROBE_INTERVAL_S whatever the load, so the
    # latencies have enough samples; the rest of the fleet fills the offered rate round-robin.
    ticks = len(per_host[0])
    seq = [ticks + 1] * hosts
    n_probe = len(probes)
    bg = list(range(n_probe, hosts))
    bg_per_s = max(msgs_per_s - n_probe / PROBE_INTERVAL_S, 1.0)
    sent = sent_bg = probe_tick = 0
    # Each probe cycle's second faulty tick fires the thermal rule (2 samples on) on every
    # fault host, and its 8 clean ticks resolve it (5 off): one firing alert per cycle per host.
    fired_cycles = 0
    send = producer.send

    def one(h: int, fault: bool) -> None:
        s = per_host[h][seq[h] % ticks]
        if h < fault_hosts:
            s = _with_fault(s, devices // 2, fault)
        s = msgspec.structs.replace(s, ts_ns=time.time_ns(), seq=seq[h])
        seq[h] += 1
        send(topic, key=s.host_id.encode(), value=codec.encode(s))

    worker_cpu_at_start = _cpu_s(ps)
    t0 = time.monotonic()
    next_probe = t0
    try:
        while (now := time.monotonic()) - t0 < duration_s:
            if now >= next_probe:
                if worker.poll() is not None:
                    raise RuntimeError("the worker exited during the latency phase")
                on = probe_tick % 12 in (4, 5, 6, 7)  # 4 faulty ticks, 8 clean: fire, resolve
                for h in range(n_probe):
                    one(h, on)
                fired_cycles += probe_tick % 12 == 5
                sent += n_probe
                probe_tick += 1
                next_probe += PROBE_INTERVAL_S
                continue
            if not bg:
                time.sleep(next_probe - now)
                continue
            delay = t0 + sent_bg / bg_per_s - now
            if delay > 0:
                time.sleep(min(delay, next_probe - now))
                continue
            one(bg[sent_bg % len(bg)], False)
            sent_bg += 1
            sent += 1
        producer.flush(timeout=60)
        elapsed = time.monotonic() - t0
        time.sleep(3.0)  # let the tail arrive
        worker_cpu_s = _cpu_s(ps) - worker_cpu_at_start  # the phase and its tail
        worker_span_s = time.monotonic() - t0
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=10)
        busy.stop.set()  # after the readers: its last sample comes after every arrival
        sampler.join(timeout=10)
        consumer.close()
    achieved = sent * devices / elapsed
    expected = fired_cycles * fault_hosts
    progress(
        f"latency phase: {achieved:.0f} device-samples/s offered, "
        f"{len(alert_times)} of {expected} alerts"
    )
    return {
        "warmup_s": round(warmup_s, 2),
        "settle_s": round(settle_s, 2),
        "target_device_samples_per_s": round(rate, 1),
        "offered_device_samples_per_s": round(achieved, 1),
        "duration_s": round(elapsed, 2),
        "worker_peak_rss_mb": peak_rss_mb(_python_of(worker)),
        # What the light load costs the worker (batching under it: docs/streams.md Round 10).
        "worker_cpu_s_per_million": round(worker_cpu_s / (sent * devices) * 1e6, 2),
        "worker_cores": round(worker_cpu_s / worker_span_s, 3),
        "sample_to_influx_ms": {
            "p50": _pct(influx_lat, 50),
            "p99": _pct(influx_lat, 99),
            "n": len(influx_lat),
            "note": "visibility by polling marker devices every ~20 ms + query time",
        },
        "sample_to_alert_ms": {
            **_alert_figures(alert_times, t_start_ns, busy),
            # Alerts the probes' faults should raise; one short of it did not arrive within
            # the phase and 3 s after it, and its latency is not in p50 / p99.
            "expected": expected,
            "note": "thermal alert ts_ns (the triggering sample) to arrival on fleet.alerts",
        },
    }


class _CoreSampler:
    """CPU seconds of a few processes and of the whole machine, every 0.1 s (a thread), so a
    slow alert can be matched with what used the cores while it waited."""

    def __init__(self, procs: Mapping[str, psutil.Process]) -> None:
        self.procs = dict(procs)
        self.stop = threading.Event()
        self.samples: list[tuple[int, dict[str, float]]] = []

    def _read(self) -> dict[str, float]:
        t = psutil.cpu_times()
        out = {"machine": t.user + t.system + t.nice + getattr(t, "irq", 0.0)}
        out["machine"] += getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)
        out.update(_services_cpu_s(self.procs))
        return out

    def run(self) -> None:
        """Sample until :attr:`stop` is set, and once more then."""
        while not self.stop.is_set():
            self.samples.append((time.time_ns(), self._read()))
            self.stop.wait(0.1)
        self.samples.append((time.time_ns(), self._read()))

    def cores_busy(self, from_ns: int, to_ns: int) -> dict[str, float]:
        """Cores each used on average from the last sample at or before ``from_ns`` to the
        first at or after ``to_ns`` (an empty dict where the samples do not cover it)."""
        before = [x for x in self.samples if x[0] <= from_ns]
        after = [x for x in self.samples if x[0] >= to_ns]
        if not before or not after:
            return {}
        (t0, a), (t1, b) = before[-1], after[0]
        dt = (t1 - t0) / 1e9
        return {k: round((b[k] - a[k]) / dt, 2) for k in a if k in b}


def _same_tick_spreads_ms(
    times: list[tuple[int, int, int]], gap_ns: int = 100_000_000
) -> list[float]:
    """Per probe tick that raised several alerts (the fault hosts' samples, sent back to back:
    stamps within ``gap_ns`` of the previous one), how much later its last alert arrived than
    its first, in ms. Alerts of one batch delivered one after another show here as a step of a
    round trip each."""
    groups: list[list[tuple[int, int]]] = []
    for ts, _, now in sorted(times):
        if not groups or ts - groups[-1][-1][0] > gap_ns:
            groups.append([])
        groups[-1].append((ts, now))
    return [(max(a for _, a in g) - min(a for _, a in g)) / 1e6 for g in groups if len(g) > 1]


def _alert_figures(
    times: list[tuple[int, int, int]], t_start_ns: int, busy: _CoreSampler | None = None
) -> dict[str, Any]:
    """The alerts' latency (``p50``, ``p99``, ``n``), where it went, and when the slowest
    ones happened.

    ``to_send`` is sample ts → the alert record's Kafka timestamp (the worker's producer stamps
    it when the alert is sent: generator, broker, worker), ``delivery`` the rest (the worker's
    producer batching, the broker, this process's consumer). ``slowest`` lists the 10 slowest
    with the phase second and the second of the minute of their sample, so bursts that line up
    with window closes (every 10 s and 60 s) or with each other show, and (``busy``) the cores
    the worker, InfluxDB, Kafka and the whole machine used while it waited.
    """
    total = [(now - ts) / 1e6 for ts, _, now in times]
    to_send = [(sent_ms * 1e6 - ts) / 1e6 for ts, sent_ms, _ in times]
    delivery = [(now - sent_ms * 1e6) / 1e6 for _, sent_ms, now in times]
    worst = sorted(times, key=lambda t: t[2] - t[0], reverse=True)[:10]
    spreads = _same_tick_spreads_ms(times)
    return {
        "p50": _pct(total, 50),
        "p99": _pct(total, 99),
        "n": len(times),
        "to_send_ms": {"p50": _pct(to_send, 50), "p99": _pct(to_send, 99)},
        "delivery_ms": {"p50": _pct(delivery, 50), "p99": _pct(delivery, 99)},
        "same_tick_spread_ms": {
            "p50": _pct(spreads, 50),
            "p99": _pct(spreads, 99),
            "ticks": len(spreads),
        },
        "slowest": [
            {
                "ms": round((now - ts) / 1e6, 1),
                "to_send_ms": round((sent_ms * 1e6 - ts) / 1e6, 1),
                "phase_s": round((ts - t_start_ns) / 1e9, 1),
                "second_of_minute": round(ts / 1e9 % 60, 1),
                **({"cores_busy": busy.cores_busy(ts, now)} if busy is not None else {}),
            }
            for ts, sent_ms, now in worst
        ],
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["faust-noop"]:
        _faust_noop_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m accelpilot.streams.bench_pipeline faust-noop ...")
