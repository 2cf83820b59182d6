"""`accelpilot demo`: the whole product in one process on a simulated fleet.

A bundled scenario (``demo-fleet``: 4 hosts x 8 GPUs + a CPU each, faults injected over time)
drives the sim backend of one agent per host; every tick each host's sampler builds its payload,
which goes through the stream worker's own stages (the embedded pipeline) into SQLite. Actions
are signed with a key made for this run and verified, applied and audited by each host's
actuator, exactly as on a real host.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.sampler import Sampler
from accelpilot.optimizer.actions import ActionSigner, controls_to_intents
from accelpilot.optimizer.evaluate import make_policy
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.scenario import Scenario, load_bundled_scenario, load_scenario
from accelpilot.optimizer.simulator import Controls
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.topics import ALERTS, ANOMALIES
from accelpilot.signing import Signer, generate_keypair, load_public_keys
from accelpilot.streams.alerting import DeviceMonitor
from accelpilot.streams.embedded import EmbeddedPipeline
from accelpilot.streams.sqlite_store import SqliteStore

DEFAULT_SCENARIO = "demo-fleet"


@dataclass
class DemoHost:
    host_id: str
    backend: SimBackend
    sampler: Sampler
    actuator: Actuator


class Demo:
    def __init__(
        self, scenario: Scenario, state_dir: Path, *, speed: float = 2.0, policy: str = "learned"
    ) -> None:
        self.scenario = scenario
        self.state_dir = state_dir
        self.speed = speed
        self.fleet = SimFleet(scenario, start_ns=time.time_ns())
        self.store = SqliteStore(state_dir / "demo.sqlite")
        self.pipeline = EmbeddedPipeline(self.store)
        private, _ = generate_keypair(state_dir / "keys")
        self.signer = Signer.from_file(private)
        public = load_public_keys(state_dir / "keys")
        self.hosts = []
        for host in self.fleet.hosts:
            backend = SimBackend(self.fleet, host)
            devices = backend.discover()
            verifier = ActionVerifier(
                public, host, time.time_ns, JsonSeqStore(state_dir / f"{host}.seq.json", host)
            )
            actuator = Actuator(
                host,
                [(backend, d) for d in devices],
                verifier,
                AuditLog(state_dir / f"{host}.audit.jsonl"),
                load_weights_path=state_dir / f"{host}.load-weights.json",
            )
            self.hosts.append(
                DemoHost(host, backend, Sampler(host, [backend], devices, 1.0), actuator)
            )
        self.ticks = 0
        self.facts = FleetFacts.from_scenario(scenario)
        self.policy = make_policy(policy, scenario) if policy != "none" else None
        self._hosts_by_id = {h.host_id: h for h in self.hosts}
        self._signers: dict[str, ActionSigner] = {}
        self.results: list[ActionResult] = []
        self.monitor = DeviceMonitor()
        self.alerts: list[Alert] = []
        self.anomaly_count = 0

    def step(self) -> None:
        """One simulated tick for the whole fleet: sample, ingest, then the optimizer acts."""
        result = self.fleet.advance()
        batch = []
        for h in self.hosts:
            sample = h.sampler.sample()
            batch.append((h.host_id.encode(), codec.encode(sample)))
        samples = self.pipeline.process(batch)
        anomalies, alerts = self.monitor.observe_batch(samples)
        for a in anomalies:
            self.store.write_event(
                a.id, ANOMALIES, a.ts_ns, a.host_id, a.device_id, codec.encode(a)
            )
        for al in alerts:
            self.store.write_event(
                f"{al.id}:{al.state}", ALERTS, al.ts_ns, al.host_id, al.device_id, codec.encode(al)
            )
        self.anomaly_count += len(anomalies)
        self.alerts.extend(alerts)
        if self.policy is not None:
            obs = Observation(
                self.ticks + 1,
                self.facts,
                self.fleet.sim.conditions().demand_rate,
                result.telemetry,
            )
            self.apply(self.policy.decide(obs), issuer=f"optimizer:{self.policy.name}")
        self.ticks += 1

    # -- actions: the optimizer's decisions go the way of any action: signed, verified, audited --
    def apply(self, controls: Controls, issuer: str) -> list[ActionResult]:
        """Turn the policy's controls into signed actions for each host's actuator (the same
        conversion as the live optimizer: optimizer/actions.py)."""
        fleet = self.fleet
        intents = controls_to_intents(
            self.facts, controls, caps_w=fleet.caps_w, standby=fleet.standby, weights=fleet.weights
        )
        signer = self._signers.setdefault(issuer, ActionSigner(self.signer, issuer))
        out: list[ActionResult] = []
        for intent in intents:
            action = signer.sign(intent)
            self.store.write_action(action)
            host = self._hosts_by_id[intent.host_id]
            results = host.actuator.handle(action)
            if intent.kind == "set_load_weights" and all(r.outcome == "applied" for r in results):
                # The host's local scheduler (here: the simulator) takes the published weights.
                assert intent.stream is not None and intent.weights is not None
                for device_id, w in intent.weights.items():
                    fleet.weights[intent.stream, self.facts.device_ids.index(device_id)] = w
            self.store.write_results(results)
            self.results.extend(results)
            out += results
        return out

    def summary(self) -> Group:
        last = self.fleet.last
        table = Table(title=f"accelpilot demo - {self.scenario.name} - tick {self.ticks}")
        for col in ("host", "devices", "power W", "mean temp C", "mean util %", "capped"):
            table.add_column(col, justify="right")
        if last is None:
            return Group(table)
        tel = last.telemetry
        for h in self.hosts:
            idx = h.backend._idx
            power = [tel.power_w[i] for i in idx if tel.reporting[i]]
            temps = [tel.temp_c[i] for i in idx if tel.reporting[i]]
            util = [tel.util_pct[i] for i in idx if tel.reporting[i]]
            capped = sum(1 for i in idx if self.fleet.caps_w[i] < self.fleet.sim.tdp_w[i])
            table.add_row(
                h.host_id,
                f"{len(idx)} ({len(power)} reporting)",
                f"{sum(power):.0f}",
                f"{sum(temps) / max(len(temps), 1):.1f}",
                f"{sum(util) / max(len(util), 1):.0f}",
                str(capped),
            )
        c = self.pipeline.counts
        applied = sum(r.outcome == "applied" for r in self.results)
        table.caption = (
            f"{c.device_samples} device-samples stored, {c.dead_letters} dead letters; "
            f"{applied} actions applied of {len(self.results)}; energy so far "
            f"{self.fleet.sim.totals().energy_j.sum() / 3.6e6:.2f} kWh"
        )
        latest = {a.id: a for a in self.alerts}
        active = [a for a in latest.values() if a.state == "firing"]
        table.caption += f"; {len(active)} alerts firing, {self.anomaly_count} anomaly scores"
        alerts = Table(title="alerts firing", show_header=True, expand=False)
        alerts.add_column("severity")
        alerts.add_column("kind")
        alerts.add_column("reason", overflow="fold", max_width=90)
        for a in sorted(active, key=lambda a: (a.severity != "critical", a.started_ts_ns))[:8]:
            colour = "red" if a.severity == "critical" else "yellow"
            alerts.add_row(f"[{colour}]{a.severity}[/]", a.kind, a.reason)
        return Group(table, alerts)

    def run(self, duration_s: float, console: Console) -> None:
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        period = 1.0 / self.speed
        next_t = time.monotonic()
        with Live(
            self.summary(), console=console, refresh_per_second=2, transient=not console.is_terminal
        ) as live:
            while time.monotonic() < deadline:
                self.step()
                live.update(self.summary())
                next_t += period
                time.sleep(max(0.0, min(next_t, deadline) - time.monotonic()))
        console.print(self.summary())


def load_demo_scenario(scenario: Path | None) -> Scenario:
    if scenario is None:
        return load_bundled_scenario(DEFAULT_SCENARIO)
    return (
        load_scenario(scenario)
        if scenario.suffix == ".json"
        else load_bundled_scenario(str(scenario))
    )


def run_demo(
    scenario: Path | None, duration_s: float, speed: float, headless: bool, port: int
) -> Demo:
    console = Console()
    state = Path(tempfile.mkdtemp(prefix="accelpilot-demo-"))
    demo = Demo(load_demo_scenario(scenario), state, speed=speed)
    if not headless:
        console.print(
            f"[yellow]The web console (http://127.0.0.1:{port}) is not built yet "
            "(issue #8); running with the terminal summary only.[/]"
        )
    console.print(f"demo state (SQLite, audit logs, keys): {state}")
    try:
        demo.run(duration_s, console)
    except KeyboardInterrupt:
        console.print("stopped")
    return demo
