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

from rich.console import Console
from rich.live import Live
from rich.table import Table

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.sampler import Sampler
from accelpilot.optimizer.scenario import Scenario, load_bundled_scenario, load_scenario
from accelpilot.schemas import codec
from accelpilot.signing import Signer, generate_keypair, load_public_keys
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
    def __init__(self, scenario: Scenario, state_dir: Path, *, speed: float = 2.0) -> None:
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

    def step(self) -> None:
        """One simulated tick for the whole fleet."""
        self.fleet.advance()
        batch = []
        for h in self.hosts:
            sample = h.sampler.sample()
            batch.append((h.host_id.encode(), codec.encode(sample)))
        self.pipeline.process(batch)
        self.ticks += 1

    def summary(self) -> Table:
        last = self.fleet.last
        table = Table(title=f"accelpilot demo - {self.scenario.name} - tick {self.ticks}")
        for col in ("host", "devices", "power W", "mean temp C", "mean util %", "capped"):
            table.add_column(col, justify="right")
        if last is None:
            return table
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
        table.caption = (
            f"{c.device_samples} device-samples stored, {c.dead_letters} dead "
            f"letters; energy so far {self.fleet.sim.totals().energy_j.sum() / 3.6e6:.2f} kWh"
        )
        return table

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
