"""`accelpilot bench pipeline` at a tiny size: every figure present with a sane type, every sample
counted in InfluxDB. Timings are printed by the benchmark, never asserted here."""

from __future__ import annotations

import numbers

import pytest

from accelpilot.config import Settings
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.bench_pipeline import bench_pipeline

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0


def test_bench_pipeline_reports_every_figure(stack: Settings) -> None:
    hosts, devices, ticks = 20, 8, 20
    messages: list[str] = []
    r = bench_pipeline(
        stack,
        hosts=hosts,
        devices=devices,
        ticks=ticks,
        latency_s=3.0,
        fault_hosts=3,
        naive_hosts=10,
        naive_ticks=5,
        progress=messages.append,
    )
    assert messages
    want = hosts * devices * ticks
    assert r["ours"]["counted"] == r["ours"]["wanted"] == want
    assert r["naive"]["counted"] == r["naive"]["wanted"] == 10 * devices * 5
    assert r["generator"]["messages"] == hosts * ticks
    assert _number(r["ours"]["peak_rss_mb"]), r["ours"]  # Linux: /proc/<pid>/status VmHWM
    assert _number(r["latency"]["worker_peak_rss_mb"]), r["latency"]
    assert isinstance(r["latency"]["reader_waits"], list), r["latency"]
    assert r["naive"]["messages"] == 10 * devices * 5 * 8  # 8 synthetic metrics
    for part, keys in {
        "ours": ("device_samples_per_s", "cpu_s_per_million", "cpu_utilization", "span_s"),
        "naive": ("device_samples_per_s", "cpu_s_per_million", "publish_messages_per_s"),
        "generator": ("publish_messages_per_s", "publish_device_samples_per_s"),
        "influxdb_alone": ("device_samples_per_s", "fields_per_device_sample"),
        "latency": (
            "offered_device_samples_per_s",
            "duration_s",
            "worker_cpu_s_per_million",
            "worker_cores",
        ),
        "ratio": ("throughput_ours_over_naive", "cpu_naive_over_ours"),
    }.items():
        for key in keys:
            assert _number(r[part][key]), (part, key, r[part][key])
    # InfluxDB alone wrote the worker's whole line mix, raw sample lines being part of it.
    alone = r["influxdb_alone"]
    assert _number(alone["raw_only"]["device_samples_per_s"])
    assert alone["lines_by_measurement"]["device_sample"] == alone["raw_only"]["lines"]
    assert alone["lines"] > alone["raw_only"]["lines"]  # + aggregates
    assert alone["fields"] > alone["raw_only"]["fields"]
    # The stack's services (started by the fixture) had their CPU measured beside the worker's.
    for name in ("influxdb", "kafka"):
        assert _number(r["ours"]["services_cpu_utilization"][name]), r["ours"]
        assert _number(alone["influxd_cpu_s_per_million"])
    for kind in ("sample_to_influx_ms", "sample_to_alert_ms"):
        fig = r["latency"][kind]
        assert isinstance(fig["n"], int)
        for q in ("p50", "p99"):
            assert fig[q] is None or _number(fig[q]), (kind, q, fig[q])
    assert r["latency"]["sample_to_influx_ms"]["n"] > 0
    assert r["latency"]["sample_to_alert_ms"]["n"] > 0  # the injected thermal faults alerted
    # One firing alert per fault cycle and fault host is expected; none arrives twice.
    expected = r["latency"]["sample_to_alert_ms"]["expected"]
    assert expected > 0 and expected % 3 == 0, expected  # 3 fault hosts
    assert r["latency"]["sample_to_alert_ms"]["n"] <= expected
    assert r["goal"]["latency_load"] > 0 and isinstance(r["goal"]["met_latency"], bool)
    # Where the slowest alerts' time went, and what used the cores meanwhile.
    alerts = r["latency"]["sample_to_alert_ms"]
    assert _number(alerts["to_send_ms"]["p99"]) and _number(alerts["delivery_ms"]["p99"])
    slowest = alerts["slowest"]
    assert slowest and all(0 <= s["second_of_minute"] < 60 for s in slowest)
    assert [s["ms"] for s in slowest] == sorted((s["ms"] for s in slowest), reverse=True)
    assert all(s["to_send_ms"] <= s["ms"] + 1 for s in slowest)  # ms-rounded Kafka timestamps
    assert all({"worker", "machine"} <= set(s["cores_busy"]) for s in slowest), slowest
    for floor in ("stages", "faust_noop", "aiokafka_getmany"):
        assert _number(r["floors"][floor]["device_samples_per_s"]), (floor, r["floors"][floor])
    assert isinstance(r["goal"]["met_throughput"], bool)
    assert isinstance(r["limit"], str)
    # Its databases are gone afterwards.
    names = influxql(stack.influx.url, "SHOW DATABASES")["results"][0]["series"][0]["values"]
    assert not any(n[0].startswith(f"bench_{r['run_id']}") for n in names)


def test_bench_pipeline_counts_a_drain_with_raw_samples_every_10s(stack: Settings) -> None:
    """With ``worker.raw_samples = "every"`` a raw point stands for 10 device-samples and the
    backlog ends on a raw tick, so the drain is counted to its end (it used to wait for ten
    times the points that would ever come, then time out)."""
    hosts, devices, ticks = 20, 8, 20
    run = stack.model_copy(
        update={
            "worker": stack.worker.model_copy(update={"raw_samples": "every", "raw_every_s": 10.0})
        }
    )
    r = bench_pipeline(
        run, hosts=hosts, devices=devices, ticks=ticks, latency_s=2.0, fault_hosts=3,
        naive_hosts=5, naive_ticks=2, timeout_s=120.0, progress=lambda _: None,
    )  # fmt: skip
    ours = r["ours"]
    assert ours["raw_samples"] == "every" and ours["device_samples_per_point"] == 10.0
    assert ours["counted"] == ours["wanted"] == hosts * devices * 2  # ticks 9 and 19
    assert _number(ours["device_samples_per_s"]) and ours["device_samples_per_s"] > 0
