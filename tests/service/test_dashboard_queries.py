"""Every dashboard panel, variable and alert-rule query returns rows on data the real pipeline
wrote into the real InfluxDB.

The data path is the production one: simulated hosts (the bundled ``demo-fleet`` scenario, 4 hosts
x 8 GPUs + a CPU, with its injected faults: thermal runaway, power noise, ECC, XID, a device going
silent) are sampled by the agents' own ``Sampler`` on the sim backend; the learned policy's
decisions are signed (``ActionSigner``) and verified, applied and audited by each host's own
``Actuator``, as the live optimizer and the agents do. The sample payloads, the actions and the
action results are published to the test's own Kafka topics; the real ``accelpilot worker``
(its own process) validates, aggregates, detects, alerts and writes everything to a test-unique
InfluxDB database, including ``action_result`` and ``optimizer_savings`` (its fleet-events
stage). Then every query is run against that database and must return rows. The worker serves
cluster ``eu-1.gpu`` (``worker.cluster``), which the ``cluster`` variable must list alone: a
query on a measurement whose points lack the tag would return nothing.

The fleet runs on a simulated clock starting ``TICKS`` seconds ago (1 s per tick), injected into
the simulator, samplers, signer and verifiers, so timestamps are consistent and in the past. The
optimizer acts only after ``BASELINE_TICKS`` (the hosts' unmanaged baseline for the savings).
The sim backend reports 7 metrics, so one more host reports every metric of the metrics table
(as an NVML host does) so that the device dashboard's per-metric panels are exercised too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.sampler import Sampler
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.dashboards import alert_rules
from accelpilot.dashboards.catalog import all_dashboards
from accelpilot.demo import load_demo_scenario
from accelpilot.errors import StackError
from accelpilot.optimizer.actions import ActionSigner, controls_to_intents
from accelpilot.optimizer.evaluate import make_policy
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import ACTION_RESULTS, ACTIONS, SAMPLES
from accelpilot.signing import Signer, generate_keypair, load_public_keys
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.influx_lines import sample_lines
from accelpilot.streams.influx_sink import InfluxSink
from tests.service.test_first_slice import _start_worker, stop_worker

pytestmark = [pytest.mark.service]

TICKS = 130
CLUSTER = "eu-1.gpu"
BASELINE_TICKS = 40
S = 10**9


def _in_cluster(settings: Settings, cluster: str) -> Settings:
    return settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"cluster": cluster})}
    )


class SimulatedFleet:
    """Sim hosts with their samplers and actuators, and the learned policy signing actions."""

    def __init__(self, state_dir: Path, start_ns: int) -> None:
        self.now_ns = start_ns
        scenario = load_demo_scenario(None)
        self.fleet = SimFleet(scenario, start_ns=start_ns)
        self.facts = FleetFacts.from_scenario(scenario)
        self.policy = make_policy("learned", scenario)
        private, _ = generate_keypair(state_dir / "keys")
        public = load_public_keys(state_dir / "keys")
        issuer = f"optimizer:{self.policy.name}"
        self.signer = ActionSigner(Signer.from_file(private), issuer, clock_ns=self.clock)
        self.hosts: dict[str, tuple[Sampler, Actuator]] = {}
        for host in self.fleet.hosts:
            backend = SimBackend(self.fleet, host)
            devices = backend.discover()
            seqs = JsonSeqStore(state_dir / f"{host}.seq.json", host)
            actuator = Actuator(
                host,
                [(backend, d) for d in devices],
                ActionVerifier(public, host, self.clock, seqs),
                AuditLog(state_dir / f"{host}.audit.jsonl"),
                load_weights_path=state_dir / f"{host}.load-weights.json",
                clock_ns=self.clock,
            )
            sampler = Sampler(host, [backend], devices, 1.0, clock_ns=self.clock)
            self.hosts[host] = (sampler, actuator)

    def clock(self) -> int:
        return self.now_ns

    def tick(
        self, tick: int, act: bool
    ) -> tuple[list[HostSample], list[Action], list[ActionResult]]:
        """One second: sample every host, then (when ``act``) the policy decides and the
        actuators handle its signed actions. Returns (samples, actions, results)."""
        step = self.fleet.advance()
        samples = [sampler.sample() for sampler, _ in self.hosts.values()]
        actions: list[Action] = []
        results: list[ActionResult] = []
        if act:
            obs = Observation(
                tick, self.facts, self.fleet.sim.conditions().demand_rate, step.telemetry
            )
            fleet = self.fleet
            intents = controls_to_intents(
                self.facts,
                self.policy.decide(obs),
                caps_w=fleet.caps_w,
                standby=fleet.standby,
                weights=fleet.weights,
            )
            for intent in intents:
                action = self.signer.sign(intent)
                got = self.hosts[intent.host_id][1].handle(action)
                if intent.kind == "set_load_weights" and all(r.outcome == "applied" for r in got):
                    assert intent.stream is not None and intent.weights is not None
                    for device_id, w in intent.weights.items():  # the host's scheduler takes them
                        fleet.weights[intent.stream, self.facts.device_ids.index(device_id)] = w
                actions.append(action)
                results += got
        self.now_ns += S
        return samples, actions, results


def _full_host(tick: int, ts_ns: int) -> HostSample:
    """A host whose collector reports every metric (values mid-range of each metric's bounds)."""
    typical = {
        "power_w": 350.0,
        "power_instant_w": 360.0,
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
    metrics: dict[str, list[float | None]] = {}
    for name, m in METRICS.items():
        base = typical.get(name, min(m.high, 50.0))
        metrics[name] = [base + (tick % 5) * (0 if name == "pstate" else 1.0)] * 2
    metrics["energy_j"] = [1e6 + 350.0 * tick] * 2
    return HostSample(
        host_id="nvml-host",
        ts_ns=ts_ns,
        seq=tick,
        interval_s=1.0,
        device_ids=["nvml-host/gpu0", "nvml-host/gpu1"],
        device_kinds=["gpu", "gpu"],
        metrics=metrics,
    )


def _publish(settings: Settings, tmp_path: Path) -> tuple[int, int, Counter[str]]:
    """Run the fleet and publish what its agents and optimizer would; returns the time range
    and the counts sent per kind."""
    start_ns = (time.time_ns() - (TICKS + 5) * S) // S * S
    sim = SimulatedFleet(tmp_path / "fleet", start_ns)
    sent: Counter[str] = Counter()
    bootstrap = settings.kafka.bootstrap_servers
    with (
        KafkaPublisher(bootstrap, settings.topic(SAMPLES)) as samples_out,
        KafkaPublisher(bootstrap, settings.topic(ACTIONS)) as actions_out,
        KafkaPublisher(bootstrap, settings.topic(ACTION_RESULTS)) as results_out,
    ):
        for tick in range(TICKS):
            samples, actions, results = sim.tick(tick, act=tick >= BASELINE_TICKS)
            samples.append(_full_host(tick, samples[0].ts_ns))
            for s in samples:
                samples_out.send(s.host_id, s)
                sent["device_sample"] += len(s.device_ids)
            for a in actions:
                actions_out.send(a.host_id, a)
            for r in results:
                results_out.send(r.host_id, r)
            sent["action"] += len(actions)
            sent["action_result"] += len(results)
            sent["applied"] += sum(r.outcome == "applied" for r in results)
    return start_ns - 120 * S, sim.now_ns + 120 * S, sent


def _count(settings: Settings, query: str) -> int:
    body = influxql(settings.influx.url, query, settings.influx.database)
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def _rows(settings: Settings, query: str) -> int:
    try:
        body = influxql(settings.influx.url, query, settings.influx.database)
    except StackError as e:
        print(e)
        return -1
    return sum(len(s.get("values") or []) for r in body["results"] for s in r.get("series", []))


class _Keys:
    """The field and tag keys of each measurement (``SHOW FIELD KEYS`` / ``SHOW TAG KEYS``), and
    the check that a query references only keys that exist."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schemas: dict[str, tuple[set[str], set[str]]] = {}

    def _keys(self, statement: str) -> set[str]:
        body = influxql(self.settings.influx.url, statement, self.settings.influx.database)
        return {row[0] for r in body["results"] for s in r.get("series", []) for row in s["values"]}

    def schema(self, measurement: str) -> tuple[set[str], set[str]]:
        if measurement not in self.schemas:
            self.schemas[measurement] = (
                self._keys(f'SHOW FIELD KEYS FROM "{measurement}"'),
                self._keys(f'SHOW TAG KEYS FROM "{measurement}"'),
            )
        return self.schemas[measurement]

    def check(self, query: str) -> list[str]:
        """What ``query`` references that its measurements lack: every double-quoted name must be
        a measurement, an ``AS`` alias, or a field or tag key of the query's measurements, and
        every function argument (``max("x")``) a field key (a function of a tag returns nothing)."""
        measurements = set(_FROM.findall(query))
        if not measurements:
            return [f"no measurement in {query}"]
        fields: set[str] = set()
        tags: set[str] = set()
        for m in measurements:
            f, t = self.schema(m)
            if not f:
                return [f"measurement {m!r} has no fields: {query}"]
            fields |= f
            tags |= t
        aliases = set(_ALIAS.findall(query))
        where = sorted(measurements)
        names = set(_QUOTED.findall(query)) - measurements - aliases
        errors = [f"{n!r} is no field or tag of {where}" for n in names - fields - tags]
        arguments = set(_ARGUMENT.findall(query)) - aliases
        errors += [f"{n!r} in a function is no field of {where}" for n in arguments - fields]
        return [f"{e}: {query}" for e in errors]


_FROM = re.compile(r'\bFROM "([^"]+)"')
_ALIAS = re.compile(r'\bAS "([^"]+)"')
_QUOTED = re.compile(r'"([^"]+)"')
_ARGUMENT = re.compile(r'\w\("([^"]+)"')


def _regex(values: list[str]) -> str:
    """Grafana's interpolation of a multi-value/All variable in a regex: ``(a|b|c)``."""
    return "(" + "|".join(re.escape(v).replace("/", "\\/") for v in values) + ")"


def _wait_for_pipeline(
    settings: Settings, worker: subprocess.Popen[bytes], log: Path, sent: Counter[str]
) -> None:
    """Until every sample and action result is in InfluxDB, and the derived measurements are."""
    want = {
        "SELECT count(seq) FROM device_sample": sent["device_sample"],
        "SELECT count(action_id) FROM action_result": sent["action_result"],
        "SELECT count(savings_ratio) FROM optimizer_savings": 1,
        "SELECT count(firing) FROM alert WHERE \"kind\" = 'failure_risk'": 1,
        "SELECT count(firing) FROM alert WHERE \"kind\" = 'device_silent'": 1,
        "SELECT count(score) FROM anomaly": 1,
        "SELECT count(sample_count) FROM host_agg WHERE \"window\" = '60s'": 1,
    }
    deadline = time.monotonic() + 240
    missing = dict(want)
    while missing and time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()[-3000:]
        missing = {q: n for q, n in want.items() if _count(settings, q) < n}
        time.sleep(1.0)
    got = {q: _count(settings, q) for q in want}
    assert not missing, f"pipeline incomplete: {got} (wanted at least {want})"
    # Exactly what was sent: no sample and no result lost or duplicated on the way.
    assert got["SELECT count(seq) FROM device_sample"] == sent["device_sample"]
    assert got["SELECT count(action_id) FROM action_result"] == sent["action_result"]


@pytest.mark.slow
def test_every_panel_and_alert_query_returns_rows(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = _in_cluster(service_settings, CLUSTER)
    worker = _start_worker(settings, tmp_path)
    try:
        start, end, sent = _publish(settings, tmp_path)
        assert sent["applied"] > 0 and sent["action"] > 0
        _wait_for_pipeline(settings, worker, tmp_path / "worker.log", sent)
    finally:
        stop_worker(worker, 30)

    # Every action result carries its action's kind (joined across the two topics).
    unknown = _count(settings, "SELECT count(action_id) FROM action_result WHERE kind = 'unknown'")
    assert unknown == 0
    # The savings are those of the learned policy, on the sim hosts that it acted on.
    body = influxql(
        settings.influx.url,
        'SHOW TAG VALUES FROM "optimizer_savings" WITH KEY IN ("policy", "host")',
        settings.influx.database,
    )
    tags = {(row[0], row[1]) for row in body["results"][0]["series"][0]["values"]}
    assert ("policy", "learned") in tags and ("host", "nvml-host") not in tags
    body = influxql(
        settings.influx.url,
        'SELECT 1 - sum("energy_j") / sum("baseline_energy_j"), count("energy_j") '
        'FROM "optimizer_savings"',
        settings.influx.database,
    )
    ratio, points = body["results"][0]["series"][0]["values"][0][1:]
    print(f"learned policy on the demo fleet: savings ratio {ratio:.3f} over {points} windows")
    assert math.isfinite(ratio) and -1.0 < ratio < 1.0

    time_filter = f"time >= {start} AND time <= {end}"
    keys = _Keys(settings)
    failures = []
    checked = 0
    for dash in (d.to_json() for d in all_dashboards()):
        values: dict[str, str] = {}
        for var in dash["templating"]["list"]:
            failures += [
                f"{dash['uid']}: variable {var['name']}: {e}" for e in keys.check(var["query"])
            ]
            q = var["query"]
            for name, v in values.items():
                q = q.replace(f"${name}", v)
            body = influxql(settings.influx.url, q, settings.influx.database)
            got = [
                row[1] for r in body["results"] for s in r.get("series", []) for row in s["values"]
            ]
            assert got, f"{dash['uid']}: variable {var['name']} has no values ({q})"
            if var["name"] == "cluster":
                assert got == [CLUSTER], got  # every point the worker wrote carries its cluster
            checked += 1
            values[var["name"]] = _regex(got)
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        for p in panels:
            for t in p["targets"]:
                failures += [f"{dash['uid']} / {p['title']}: {e}" for e in keys.check(t["query"])]
                q = t["query"].replace("$timeFilter", time_filter).replace("$__interval", "10s")
                for name, v in values.items():
                    q = q.replace(f"${name}", v)
                assert not re.search(r"\$\w", q), q
                checked += 1
                if _rows(settings, q) <= 0:
                    failures.append(f"{dash['uid']} / {p['title']}: no rows: {q}")
    for rule in alert_rules.api_rules():
        for d in rule["data"]:
            if d["datasourceUid"] == "__expr__":
                continue
            failures += [f"alert {rule['uid']}: {e}" for e in keys.check(d["model"]["query"])]
            q = d["model"]["query"].replace("$timeFilter", time_filter)
            checked += 1
            if _rows(settings, q) <= 0:
                failures.append(f"alert {rule['uid']}: no rows: {q}")
    # The check itself sees a misspelt field, a tag used as a field and a missing measurement.
    assert keys.check('SELECT max("temp_degc") FROM "device_sample" WHERE $timeFilter')
    assert keys.check('SELECT count("host") FROM "device_sample" WHERE $timeFilter')
    assert keys.check('SELECT max("score") FROM "anomalies" WHERE $timeFilter')
    assert not failures, "bad queries:\n" + "\n".join(failures)
    assert checked > 60
    assert len(keys.schemas) >= 7  # every measurement the worker writes was looked at


# -- collector silence, per host ------------------------------------------------------------------
def _grafana_eval(settings: Settings, rule: alert_rules.Rule, at_ns: int) -> dict[str, float]:
    """What Grafana computes for ``rule`` when it evaluates it at ``at_ns``: ``$timeFilter`` as
    its InfluxDB datasource renders a relative range (``time >= <from>ms and time <= <to>ms``),
    then the reduce expression (null values dropped) per series. {host: value}; {} is NoData."""
    to_ms = at_ns // 10**6
    time_filter = f"time >= {to_ms - rule.window_s * 1000}ms and time <= {to_ms}ms"
    body = influxql(
        settings.influx.url,
        rule.query.replace("$timeFilter", time_filter),
        settings.influx.database,
    )
    reduce = {"last": lambda v: v[-1], "max": max, "min": min, "mean": lambda v: sum(v) / len(v)}
    out = {}
    for r in body["results"]:
        for series in r.get("series", []):
            values = [row[1] for row in series["values"] if row[1] is not None]
            if values:
                out[series["tags"]["host"]] = float(reduce[rule.reducer](values))
    return out


def _fires(rule: alert_rules.Rule, value: float) -> bool:
    """Grafana's threshold expression (``C``) on the reduced value."""
    kind, _, arg = rule.condition.partition(" ")
    return value > float(arg) if kind == "gt" else value < float(arg)


async def _write_lines(settings: Settings, lines: list[str]) -> None:
    sink = InfluxSink(settings.influx)
    await sink.start()
    try:
        await sink.write(lines)
    finally:
        await sink.stop()
    assert sink.points_written == len(lines) and sink.points_rejected == 0


def test_collector_silence_reads_zero_for_a_host_that_stopped_while_others_report(
    service_settings: Settings,
) -> None:
    """Host ``quiet`` stops reporting halfway through ``busy``'s 10 minutes. The collector-silence
    query, evaluated as Grafana would at several instants, keeps a series for ``quiet`` that reads
    0 (its alert fires) rather than dropping it (a missing series, which Grafana resolves), does
    not fire for a reporting host just after a minute boundary (samples at .5 s: the current
    minute's bucket is still empty), and returns nothing once the whole fleet has been silent
    longer than its range (NoData, which the rule maps to Alerting)."""
    settings = service_settings
    rule = next(r for r in alert_rules.RULES if r.uid == "accelpilot-collector-silence")
    base = (time.time_ns() // S - 602) * S + S // 2
    busy = list(synthetic_samples("busy", n_devices=2, n_ticks=600, start_ns=base))
    quiet = list(synthetic_samples("quiet", n_devices=2, n_ticks=300, start_ns=base, seed=1))
    cluster = settings.worker.cluster
    lines = [line for s in busy + quiet for line in sample_lines(s, cluster=cluster)]
    asyncio.run(_write_lines(settings, lines))
    stop, end = quiet[-1].ts_ns, busy[-1].ts_ns
    assert end < time.time_ns()

    # quiet silent for 5 minutes while busy reports: a series of its own, reading 0, firing.
    got = _grafana_eval(settings, rule, end)
    assert got["quiet"] == 0.0 and _fires(rule, got["quiet"]), got
    assert got["busy"] >= 60 and not _fires(rule, got["busy"]), got

    # Both reporting, 200 ms after a minute boundary: the newest bucket has no sample yet.
    boundary = ((base + 150 * S) // (60 * S) + 1) * 60 * S + 200 * 10**6
    assert boundary < stop - 10 * S
    got = _grafana_eval(settings, rule, boundary)
    assert set(got) == {"busy", "quiet"} and not any(_fires(rule, v) for v in got.values()), got
    plain_count = rule.query.replace('moving_average(count("seq"), 2) * 2', 'count("seq")')
    assert plain_count != rule.query
    naive = dataclasses.replace(rule, query=plain_count)  # what the last bucket alone reads
    assert _grafana_eval(settings, naive, boundary) == {"busy": 0.0, "quiet": 0.0}

    # quiet stopped 20 s ago: not yet.
    assert not _fires(rule, _grafana_eval(settings, rule, stop + 20 * S)["quiet"])

    # Everyone silent for 5 minutes: each host fires on its own.
    got = _grafana_eval(settings, rule, end + 300 * S)
    assert got == {"busy": 0.0, "quiet": 0.0}

    # The documented limit: a host silent for longer than the range drops out of the query
    # (moving_average reads one bucket before the range: up to a minute later).
    assert set(_grafana_eval(settings, rule, stop + (rule.window_s + 180) * S)) == {"busy"}

    # Silent for longer than the range, the whole fleet: no series at all -> NoData -> Alerting.
    assert _grafana_eval(settings, rule, end + (rule.window_s + 180) * S) == {}
    assert rule.no_data == "Alerting"


# -- points written before the cluster tag --------------------------------------------------------
def _variable(dash: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in dash["templating"]["list"] if v["name"] == name)


def _tag_values(settings: Settings, query: str) -> list[str]:
    body = influxql(settings.influx.url, query, settings.influx.database)
    return [row[1] for r in body["results"] for s in r.get("series", []) for row in s["values"]]


def test_points_without_a_cluster_tag_show_under_all_only(service_settings: Settings) -> None:
    """A database that holds points from before the cluster tag (host ``old``, lines exactly as the
    worker wrote them then) and from two clusters. On the real InfluxDB: the ``cluster`` variable
    lists the two clusters only; its All (``.*``) matches the untagged points too (InfluxQL reads a
    missing tag as ``""``), while choosing clusters, even all of them one by one, leaves them out;
    the alert rules count tagged points only (``old`` is no silent collector)."""
    settings = service_settings
    base = (time.time_ns() // S - 300) * S
    lines = []
    for host, cluster in (("old", "x"), ("new", "c1"), ("other", "c2")):
        for s in synthetic_samples(host, n_devices=2, n_ticks=120, start_ns=base):
            for line in sample_lines(s, cluster=cluster):
                lines.append(line.replace(",cluster=x,", ",") if host == "old" else line)
    assert lines[0].startswith("device_sample,host=old,device=")  # the format before the tag
    asyncio.run(_write_lines(settings, lines))

    fleet = next(d.to_json() for d in all_dashboards() if d.uid == "accelpilot-fleet")
    cluster_var, host_var = _variable(fleet, "cluster"), _variable(fleet, "host")
    assert _tag_values(settings, cluster_var["query"]) == ["c1", "c2"]
    hottest = next(p for p in fleet["panels"] if p.get("title") == "Hottest device by host")
    time_filter = f"time >= {base} AND time <= {base + 200 * S}"

    def hosts(cluster: str) -> set[str]:
        """The host variable's values, and the hosts of the panel with every one of them."""
        listed = _tag_values(settings, host_var["query"].replace("$cluster", cluster))
        q = hottest["targets"][0]["query"].replace("$timeFilter", time_filter)
        q = q.replace("$cluster", cluster).replace("$host", _regex(listed))
        body = influxql(settings.influx.url, q, settings.influx.database)
        shown = {s["tags"]["host"] for r in body["results"] for s in r.get("series", [])}
        assert shown == set(listed), (cluster, listed, shown)
        return shown

    assert hosts(cluster_var["allValue"]) == {"old", "new", "other"}  # All
    assert hosts(_regex(["c1", "c2"])) == {"new", "other"}  # every cluster, chosen
    assert hosts(_regex(["c1"])) == {"new"}

    rule = next(r for r in alert_rules.RULES if r.uid == "accelpilot-collector-silence")
    got = _grafana_eval(settings, rule, base + 150 * S)
    assert set(got) == {"new", "other"}, got
