"""Every dashboard panel query and every alert-rule query returns rows on realistic data.

The data goes into the real InfluxDB (a test-unique database) through the real pipeline pieces:
the demo fleet (accelpilot.demo.Demo, bundled demo-fleet scenario) for 90 ticks, its samples via
``sample_lines``, 10 s and 60 s aggregates via ``WindowAggregator`` + ``aggregate_lines``, its
monitor's anomalies and alerts via ``event_lines``, its action results and the savings against a
no-policy run of the same scenario via ``accelpilot.dashboards.measurements``. The sim backend
reports 7 metrics, so one extra host reports every metric of the metrics table (as an NVML host
does), so the device dashboard's per-metric panels are exercised too.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from accelpilot.config import Settings
from accelpilot.dashboards import alert_rules
from accelpilot.dashboards.catalog import all_dashboards
from accelpilot.dashboards.measurements import action_result_lines, savings_line
from accelpilot.demo import Demo, load_demo_scenario
from accelpilot.errors import StackError
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.aggregate_lines import aggregate_lines
from accelpilot.streams.aggregates import WindowAggregator
from accelpilot.streams.event_lines import alert_lines, anomaly_lines
from accelpilot.streams.influx_lines import sample_lines

pytestmark = [pytest.mark.service, pytest.mark.slow]

TICKS = 90


def _full_host(ts_ns: list[int]) -> list[HostSample]:
    """A host whose collector reports every metric (values mid-range of each metric's bounds)."""
    typical = {
        "power_w": 350.0,
        "power_instant_w": 360.0,
        "energy_j": 1e6,
        "cap_w": 700.0,
        "temp_c": 60.0,
        "mem_temp_c": 70.0,
        "mem_used_bytes": 4e10,
        "mem_total_bytes": 8e10,
        "clock_sm_mhz": 1410.0,
        "clock_mem_mhz": 2619.0,
        "pstate": 0.0,
        "throttle_reasons_mask": 4.0,
    }
    out = []
    for i, ts in enumerate(ts_ns):
        metrics = {}
        for name, m in METRICS.items():
            base = typical.get(name, min(m.high, 50.0))
            metrics[name] = [base + (i % 5) * (0 if name == "pstate" else 1.0)] * 2
        metrics["energy_j"] = [1e6 + 350.0 * i] * 2
        out.append(
            HostSample(
                host_id="nvml-host",
                ts_ns=ts,
                seq=i,
                interval_s=1.0,
                device_ids=["nvml-host/gpu0", "nvml-host/gpu1"],
                device_kinds=["gpu", "gpu"],
                metrics=metrics,
            )
        )
    return out


def _write(settings: Settings, lines: list[str]) -> None:
    url = f"{settings.influx.url}/write?db={settings.influx.database}&precision=ns"
    for i in range(0, len(lines), 5000):
        body = "\n".join(lines[i : i + 5000]).encode()
        with urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=30):
            pass


def _load(settings: Settings, tmp_path: Path) -> tuple[int, int]:
    scenario = load_demo_scenario(None)
    (tmp_path / "demo").mkdir()
    (tmp_path / "baseline").mkdir()
    demo = Demo(scenario, tmp_path / "demo")
    baseline = Demo(scenario, tmp_path / "baseline", policy="none")
    samples: list[HostSample] = []
    anomalies = []
    process, observe = demo.pipeline.process, demo.monitor.observe_batch

    def keep_samples(batch):  # type: ignore[no-untyped-def]
        out = process(batch)
        samples.extend(out)
        return out

    def keep_anomalies(batch):  # type: ignore[no-untyped-def]
        a, al = observe(batch)
        anomalies.extend(a)
        return a, al

    demo.pipeline.process = keep_samples  # type: ignore[method-assign]
    demo.monitor.observe_batch = keep_anomalies  # type: ignore[method-assign]
    lines: list[str] = []
    for tick in range(1, TICKS + 1):
        demo.step()
        baseline.step()
        if tick % 10 == 0:
            e = float(demo.fleet.sim.totals().energy_j.sum())
            b = float(baseline.fleet.sim.totals().energy_j.sum())
            lines.append(savings_line("learned", e, b, float(tick), samples[-1].ts_ns))
    samples += _full_host(sorted({s.ts_ns for s in samples})[:: max(1, len(samples) // 60)])
    for s in samples:
        lines += sample_lines(s)
    for window_s in (10.0, 60.0):
        agg = WindowAggregator(window_s=window_s, allowed_lateness_s=0.0)
        aggs = [a for s in sorted(samples, key=lambda s: s.ts_ns) for a in agg.add(s)]
        lines += aggregate_lines(aggs + agg.flush_all())
    lines += anomaly_lines(anomalies) + alert_lines(demo.alerts)
    kinds = dict(demo.store.query("SELECT action_id, kind FROM action"))
    lines += action_result_lines((r, kinds[r.action_id]) for r in demo.results)
    _write(settings, lines)
    ts = [s.ts_ns for s in samples]
    return min(ts) - 120 * 10**9, max(ts) + 120 * 10**9


def _rows(settings: Settings, query: str) -> int:
    try:
        body = influxql(settings.influx.url, query, settings.influx.database)
    except StackError as e:
        print(e)
        return -1
    return sum(len(s.get("values") or []) for r in body["results"] for s in r.get("series", []))


def _regex(values: list[str]) -> str:
    """Grafana's interpolation of a multi-value/All variable in a regex: ``(a|b|c)``."""
    return "(" + "|".join(re.escape(v).replace("/", "\\/") for v in values) + ")"


def test_every_panel_and_alert_query_returns_rows(
    service_settings: Settings, tmp_path: Path
) -> None:
    start, end = _load(service_settings, tmp_path)
    time_filter = f"time >= {start} AND time <= {end}"
    failures = []
    checked = 0
    for dash in (d.to_json() for d in all_dashboards()):
        values: dict[str, str] = {}
        for var in dash["templating"]["list"]:
            if var["type"] == "custom":
                values[var["name"]] = var["current"]["value"]
                continue
            q = var["query"]
            for name, v in values.items():
                q = q.replace(f"${name}", v)
            body = influxql(service_settings.influx.url, q, service_settings.influx.database)
            got = [
                row[1] for r in body["results"] for s in r.get("series", []) for row in s["values"]
            ]
            assert got, f"{dash['uid']}: variable {var['name']} has no values ({q})"
            values[var["name"]] = _regex(got)
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        for p in panels:
            for t in p["targets"]:
                q = t["query"].replace("$timeFilter", time_filter).replace("$__interval", "10s")
                for name, v in values.items():
                    q = q.replace(f"${name}", v)
                assert not re.search(r"\$\w", q), q
                checked += 1
                if _rows(service_settings, q) <= 0:
                    failures.append(f"{dash['uid']} / {p['title']}: {q}")
    for rule in alert_rules.api_rules():
        for d in rule["data"]:
            if d["datasourceUid"] == "__expr__":
                continue
            q = d["model"]["query"].replace("$timeFilter", time_filter)
            checked += 1
            if _rows(service_settings, q) <= 0:
                failures.append(f"alert {rule['uid']}: {q}")
    assert not failures, "queries returning nothing:\n" + "\n".join(failures)
    assert checked > 60
