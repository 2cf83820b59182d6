"""`accelpilot demo`: the whole product in one process on a simulated fleet.

A bundled scenario (``demo-fleet``: 4 hosts x 8 GPUs + a CPU each, faults injected over time)
drives the sim backend of one agent per host; every tick each host's sampler builds its payload,
which goes through the stream worker's own stages (the embedded pipeline) into SQLite. Actions
are signed with a key made for this run and verified, applied and audited by each host's
actuator, exactly as on a real host.

The optimizer's policy runs every tick. In ``auto`` mode its decisions are applied (signed,
issuer ``optimizer:<policy>``); in ``advise`` mode they become recommendations
(:class:`~accelpilot.console.advisor.Advisor`) that an operator accepts or dismisses in the
console. The operator's own controls (power caps per device or group, the fleet power budget,
a stream's load distribution) take the very same path, issuer ``operator:<name>``; a device or
stream the operator set is *pinned*: the optimizer leaves it alone until released. A shadow
simulator of the same scenario and seed under the ``max`` policy gives the efficiency score its
baseline (:mod:`accelpilot.console.score`).

Threads: ``lock`` guards every piece of state here; the simulation loop holds it for one tick,
the console's handlers for one request.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from accelpilot.collectors.action_verifier import ActionVerifier, JsonSeqStore
from accelpilot.collectors.actuator import Actuator
from accelpilot.collectors.audit_log import AuditLog
from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.device import DeviceInfo
from accelpilot.collectors.sampler import Sampler
from accelpilot.console.advisor import Advisor, Recommendation, Savings
from accelpilot.console.controls import (
    requested_caps,
    requested_weights,
    resolve_devices,
    stream_index,
)
from accelpilot.console.errors import ConflictError, InvalidRequestError
from accelpilot.console.score import EfficiencyScore, ShadowBaseline, slo_ok
from accelpilot.optimizer.actions import ActionSigner, Intent, controls_to_intents
from accelpilot.optimizer.evaluate import make_policy
from accelpilot.optimizer.facts import FleetFacts, Observation
from accelpilot.optimizer.live import LiveOptimizer
from accelpilot.optimizer.physics import clip_caps_to_budget
from accelpilot.optimizer.scenario import Scenario, load_bundled_scenario, load_scenario
from accelpilot.optimizer.simulator import Controls, FleetSimulator
from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import ActionMode
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.topics import ALERTS, ANOMALIES
from accelpilot.signing import Signer, generate_keypair, load_public_keys
from accelpilot.streams.alerting import DeviceMonitor
from accelpilot.streams.embedded import EmbeddedPipeline
from accelpilot.streams.sqlite_store import SqliteStore

DEFAULT_SCENARIO = "demo-fleet"
Mode = Literal["auto", "advise"]
MODES: tuple[Mode, ...] = ("auto", "advise")


@dataclass
class DemoHost:
    host_id: str
    backend: SimBackend
    sampler: Sampler
    actuator: Actuator
    devices: list[DeviceInfo]


class Demo:
    def __init__(
        self,
        scenario: Scenario,
        state_dir: Path,
        *,
        speed: float = 2.0,
        policy: str = "learned",
        mode: Mode = "auto",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.scenario = scenario
        self.state_dir = state_dir
        self.speed = speed
        self.mode: Mode = mode
        self.lock = threading.RLock()
        self.fleet = SimFleet(scenario, start_ns=time.time_ns())
        self.store = SqliteStore(state_dir / "demo.sqlite")
        # Samples carry the simulated clock (one tick = tick_s), which runs faster than the wall
        # clock at speed > 1; the pipeline's "now" (future-timestamp check) is that clock too.
        self.pipeline = EmbeddedPipeline(self.store, clock_ns=self._sim_now_ns)
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
                DemoHost(
                    host,
                    backend,
                    Sampler(host, [backend], devices, scenario.tick_s, clock_ns=self._sim_now_ns),
                    actuator,
                    devices,
                )
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
        # Operator state: pinned devices / streams, the fleet budget, console events.
        self.cap_pins: set[int] = set()
        self.stream_pins: set[int] = set()
        self.budget_w: float | None = None
        self.events: list[dict[str, Any]] = []
        self.advisor = Advisor()
        # The live optimizer's model-based savings estimate (expected_power), on this fleet.
        self.model: LiveOptimizer | None = None
        if self.policy is not None:
            self.model = LiveOptimizer(self.facts, self.signer, mode="advise", policy=self.policy)
            self.model.caps_w = self.fleet.caps_w
            self.model.weights = self.fleet.weights
        self.shadow = ShadowBaseline(scenario, self.fleet.sim.seed, self.fleet.sim.start_ns)
        self.score = EfficiencyScore(scenario.tick_s)

    @property
    def devices(self) -> list[DeviceInfo]:
        return [d for h in self.hosts for d in h.devices]

    def _sim_now_ns(self) -> int:
        """The simulated clock: the timestamp of the tick simulated last."""
        last = self.fleet.last
        return int(last.telemetry.ts_ns) if last is not None else self.fleet.sim.start_ns

    def _continue_clock(self) -> None:
        """At the scenario's end, start the next run where the clock stands (``SimFleet`` would
        restart at its first timestamp, and the new samples would overwrite the history)."""
        sim = self.fleet.sim
        if not sim.done:
            return
        self.fleet.sim = FleetSimulator(
            self.scenario,
            seed=sim.seed + 1,
            start_ns=sim.start_ns + round(sim.n_ticks * sim.tick_s * 1e9),
        )
        self.fleet._xid_seen[:] = 0

    def step(self) -> None:
        """One simulated tick for the whole fleet: sample, ingest, then the optimizer acts."""
        with self.lock:
            self._step()

    def _step(self) -> None:
        self._continue_clock()
        result = self.fleet.advance()
        base = self.shadow.step(self.fleet.sim.seed)
        truth = result.truth
        self.score.add(
            self.ticks,
            float(truth.energy_j.sum()),
            float(base.energy_j.sum()),
            work=float(truth.work.sum()),
            baseline_work=float(base.work.sum()),
            slo_ok=slo_ok(truth),
        )
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
            controls = self._constrain(self.policy.decide(obs))
            if self.mode == "auto":
                self.apply(controls, issuer=self.optimizer_issuer, reason="learned policy")
            else:
                self.advisor.update(self.intents(controls), self.ticks, self.expected_savings)
        self.ticks += 1

    @property
    def optimizer_issuer(self) -> str:
        return f"optimizer:{self.policy.name}" if self.policy is not None else "optimizer:none"

    def _constrain(self, c: Controls) -> Controls:
        """The optimizer's controls within the operator's choices: pinned devices and streams
        keep what the operator set; the fleet budget bounds the sum of caps."""
        f, fleet = self.facts, self.fleet
        caps = np.array(f.tdp_w if c.caps_w is None else c.caps_w, dtype=float)
        pins = sorted(self.cap_pins)
        caps[pins] = fleet.caps_w[pins]
        caps = clip_caps_to_budget(caps, f.min_cap_w, self.budget_w)
        weights = np.array(f.even_weights if c.weights is None else c.weights, dtype=float)
        streams = sorted(self.stream_pins)
        weights[streams] = fleet.weights[streams]
        standby = None
        if c.standby is not None:
            standby = np.array(c.standby, dtype=bool)
            standby[pins] = fleet.standby[pins]
        return Controls(caps_w=caps, weights=weights, standby=standby)

    def intents(self, controls: Controls) -> list[Intent]:
        fleet = self.fleet
        intents: list[Intent] = controls_to_intents(
            self.facts, controls, caps_w=fleet.caps_w, standby=fleet.standby, weights=fleet.weights
        )
        return intents

    def expected_savings(self, it: Intent) -> Savings:
        """What a recommendation should save, from the live optimizer's own learned model
        (``LiveOptimizer.expected_power``) at the device's current work rate."""
        last, f, d = self.fleet.last, self.facts, it.device
        if d is None or last is None or not last.telemetry.reporting[d]:
            return Savings(None, "load distribution: no per-device estimate; watch the charts")
        tel = last.telemetry
        power = float(tel.power_w[d])
        if it.kind == "park":
            return Savings(power - float(f.standby_w[d]), "measured power - standby power")
        if it.kind == "wake":
            return Savings(float(f.standby_w[d] - f.idle_w[d]), "standby power - idle power")
        if it.cap_w is None or self.model is None:
            return Savings(None, "no model")
        rate = float(np.nan_to_num(tel.work_rate[d]))
        now = self.model.expected_power(d, float(self.fleet.caps_w[d]), rate)
        new = self.model.expected_power(d, it.cap_w, rate)
        if now is None or new is None:
            return Savings(None, "the learned model has not fitted this stream yet")
        return Savings(
            now[0] - new[0],
            f"learned model at {rate:.0f} units/s: {now[0]:.0f} W -> {new[0]:.0f} W",
        )

    # -- actions: the optimizer's decisions go the way of any action: signed, verified, audited --
    def apply(
        self, controls: Controls, issuer: str, *, mode: ActionMode = "auto", reason: str = ""
    ) -> list[ActionResult]:
        """Turn controls into signed actions for each host's actuator (the same conversion as
        the live optimizer: optimizer/actions.py)."""
        with self.lock:
            return self.apply_intents(self.intents(controls), issuer, mode=mode, reason=reason)

    def apply_intents(
        self, intents: list[Intent], issuer: str, *, mode: ActionMode = "auto", reason: str = ""
    ) -> list[ActionResult]:
        fleet = self.fleet
        signer = self._signers.setdefault(issuer, ActionSigner(self.signer, issuer))
        out: list[ActionResult] = []
        for intent in intents:
            action = signer.sign(intent, mode=mode, reason=reason)
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

    # -- the operator's controls (the console's actions); each validates before changing anything --
    def resolve_devices(
        self,
        device_ids: list[str] | None = None,
        host_id: str | None = None,
        stream_id: str | None = None,
    ) -> list[int]:
        """Device indices of exactly one target: a list of devices, a host or a stream."""
        hosts = {h: list(host.backend._idx) for h, host in self._hosts_by_id.items()}
        return resolve_devices(self.facts, hosts, device_ids, host_id, stream_id)

    def _stream_index(self, stream_id: str | None) -> int:
        return stream_index(self.facts, stream_id)

    def _event(self, who: str, what: str, detail: str, **extra: Any) -> None:
        self.events.append(
            {"ts_ns": time.time_ns(), "who": who, "what": what, "detail": detail, **extra}
        )

    def _results_summary(self, results: list[ActionResult]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out

    def operator_set_caps(
        self,
        who: str,
        idx: list[int],
        *,
        cap_w: float | None = None,
        fraction_of_tdp: float | None = None,
    ) -> list[ActionResult]:
        """Set the power cap of the devices ``idx`` (absolute, or a fraction of each one's
        ``tdp_w``); they stay pinned until released."""
        f = self.facts
        with self.lock:
            caps, what = requested_caps(
                f, self.fleet.caps_w, idx, cap_w=cap_w, fraction_of_tdp=fraction_of_tdp
            )
            if self.budget_w is not None and caps.sum() > self.budget_w + 1e-6:
                raise ConflictError(
                    f"the caps would sum to {caps.sum():.0f} W, above the fleet power budget "
                    f"{self.budget_w:.0f} W; lower them or raise the budget first"
                )
            results = self.apply(
                Controls(caps_w=caps),
                f"operator:{who}",
                mode="manual",
                reason=f"power cap slider: {what}",
            )
            self.cap_pins.update(idx)
            self._event(
                who,
                "set_power_cap",
                f"{what} on {len(idx)} device(s)",
                devices=[f.device_ids[i] for i in idx],
                outcomes=self._results_summary(results),
            )
            return results

    def operator_set_budget(self, who: str, budget_w: float | None) -> list[ActionResult]:
        """Bound the sum of all caps (``None`` removes the bound); caps above it are lowered now
        (every device keeps ``min_cap_w``, the headroom shrinks by one factor) and the
        optimizer's caps are kept within it from now on."""
        f = self.facts
        with self.lock:
            results: list[ActionResult] = []
            if budget_w is not None:
                floor = float(f.min_cap_w.sum())
                if budget_w < floor:
                    raise InvalidRequestError(
                        f"budget {budget_w:g} W is below the sum of the devices' minimum caps "
                        f"({floor:g} W); give at least that"
                    )
                caps = clip_caps_to_budget(self.fleet.caps_w, f.min_cap_w, budget_w)
                results = self.apply(
                    Controls(caps_w=caps),
                    f"operator:{who}",
                    mode="manual",
                    reason=f"fleet power budget {budget_w:g} W",
                )
            self.budget_w = budget_w
            self._event(
                who,
                "set_fleet_budget",
                "removed" if budget_w is None else f"{budget_w:g} W",
                outcomes=self._results_summary(results),
            )
            return results

    def operator_set_weights(
        self, who: str, stream_id: str, weights: dict[str, float]
    ) -> list[ActionResult]:
        """Distribute ``stream_id``'s load over its devices (relative shares; devices not named
        get 0); the stream stays pinned until released."""
        f = self.facts
        with self.lock:
            w, s = requested_weights(f, self.fleet.weights, stream_id, weights)
            results = self.apply(
                Controls(weights=w),
                f"operator:{who}",
                mode="manual",
                reason=f"load distribution slider: {stream_id}",
            )
            self.stream_pins.add(s)
            self._event(
                who,
                "set_load_weights",
                stream_id,
                outcomes=self._results_summary(results),
            )
            return results

    def operator_release(
        self, who: str, idx: list[int] | None = None, stream_id: str | None = None
    ) -> None:
        """Hand pinned devices (or a stream; both ``None``: everything) back to the optimizer."""
        with self.lock:
            if stream_id is not None:
                self.stream_pins.discard(self._stream_index(stream_id))
                detail = f"stream {stream_id}"
            elif idx is not None:
                self.cap_pins.difference_update(idx)
                detail = f"{len(idx)} device(s)"
            else:
                self.cap_pins.clear()
                self.stream_pins.clear()
                detail = "everything"
            self._event(who, "release", detail)

    def operator_set_mode(self, who: str, mode: str) -> None:
        new: Mode = "auto" if mode == "auto" else "advise"
        if mode != new:
            raise InvalidRequestError(f"mode must be one of {list(MODES)}, not {mode!r}")
        with self.lock:
            if new != self.mode:
                self.mode = new
                self.advisor.clear()
                self._event(who, "set_mode", mode)

    def accept(self, who: str, rec_id: str) -> tuple[Recommendation, list[ActionResult]]:
        """Apply an open recommendation through the signed path, issued by the operator. A
        stream's load distribution is one decision: accepting its part on one host accepts the
        parts on its other hosts too."""
        with self.lock:
            rec = self.advisor.get(rec_id)
            group = [rec]
            if rec.intent.kind == "set_load_weights":
                group += [
                    r
                    for r in self.advisor.open.values()
                    if r.id != rec.id
                    and r.intent.kind == "set_load_weights"
                    and r.intent.stream_id == rec.intent.stream_id
                ]
            results = self.apply_intents(
                [r.intent for r in group],
                f"operator:{who}",
                mode="manual",
                reason=f"accepted {rec.id} from {self.optimizer_issuer} ({rec.savings.basis})",
            )
            for r in group:
                self.advisor.accepted(r.id)
            self._event(
                who,
                "accept_recommendation",
                ", ".join(r.id for r in group),
                outcomes=self._results_summary(results),
            )
            return rec, results

    def accept_all(self, who: str) -> tuple[int, list[ActionResult]]:
        """Accept every open recommendation at once (one batch of signed actions)."""
        with self.lock:
            recs = list(self.advisor.open.values())
            results = self.apply_intents(
                [r.intent for r in recs],
                f"operator:{who}",
                mode="manual",
                reason=f"accepted all {len(recs)} recommendations from {self.optimizer_issuer}",
            )
            for r in recs:
                self.advisor.accepted(r.id)
            self._event(
                who,
                "accept_all_recommendations",
                f"{len(recs)} recommendation(s)",
                outcomes=self._results_summary(results),
            )
            return len(recs), results

    def dismiss(self, who: str, rec_id: str) -> Recommendation:
        with self.lock:
            rec = self.advisor.dismiss(rec_id)
            self._event(who, "dismiss_recommendation", rec.id)
            return rec

    def summary(self) -> Group:
        with self.lock:
            return self._summary()

    def _summary(self) -> Group:
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
        sc = self.score
        table.caption += (
            f"; saved {sc.saved_j / 3.6e6:.3f} kWh vs max "
            f"({(sc.saved_j / sc.baseline_energy_j if sc.baseline_energy_j else 0):.1%}), "
            f"score {sc.points}, streak {sc.streak_ticks * self.scenario.tick_s:.0f} s; "
            f"mode {self.mode}"
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
    scenario: Path | None,
    duration_s: float,
    speed: float,
    headless: bool,
    port: int,
    *,
    mode: Mode = "auto",
    host: str = "127.0.0.1",
    tokens: str = "",
) -> Demo:
    """Run the demo; unless ``headless``, serve the console on ``host:port`` meanwhile."""
    console = Console()
    state = Path(tempfile.mkdtemp(prefix="accelpilot-demo-"))
    demo = Demo(load_demo_scenario(scenario), state, speed=speed, mode=mode)
    server = None
    if not headless:
        from accelpilot.console.app import create_app
        from accelpilot.console.auth import Auth
        from accelpilot.console.server import ConsoleServer
        from accelpilot.console.source import SqliteSource

        auth = Auth.for_bind(host, tokens)
        server = ConsoleServer(create_app(demo, SqliteSource(demo.store), auth), host, port)
        server.start()
        console.print(
            f"console: [bold]{server.url}[/] (API docs {server.url}/docs)"
            + ("; token required" if auth.required else "")
        )
    console.print(f"demo state (SQLite, audit logs, keys): {state}")
    try:
        demo.run(duration_s, console)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        if server is not None:
            server.stop()
    return demo
