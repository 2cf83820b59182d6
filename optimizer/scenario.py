"""Scenario files (docs: shared/spec/fleet-scenarios.md): load, validate, freeze.

A scenario is a contract, so validation is strict: every key the spec names is checked, unknown
keys are rejected, and a broken file raises :class:`~accelpilot.errors.ConfigError` whose message
starts with the JSON path of the offending value, e.g.
``devices[2].min_cap_w=800 > tdp_w=700``.

>>> s = parse_scenario({
...     "name": "one", "duration_s": 10, "tick_s": 1, "seed": 1,
...     "objective": {"max_slowdown": 1.1, "fleet_power_budget_w": None},
...     "devices": [{"id": "g0", "kind": "gpu", "vendor": "nvidia", "model": "H100",
...                  "idle_w": 70, "tdp_w": 700, "min_cap_w": 200, "peak_rate": 1000.0}],
...     "streams": [{"id": "a", "demand_rate": 500.0, "devices": ["g0"],
...                  "phases": [{"at_s": 0, "beta": 0.33, "util": 0.95}]}]})
>>> s.n_ticks, s.devices[0].standby_w, s.devices[0].wake_s
(10, 17.5, 30.0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from accelpilot.errors import ConfigError

DeviceKind = Literal["gpu", "cpu", "npu", "tpu"]
FaultType = Literal["thermal_throttle", "off_bus", "ecc_storm", "power_spike"]

DEVICE_KINDS: tuple[str, ...] = ("gpu", "cpu", "npu", "tpu")
FAULT_TYPES: tuple[str, ...] = ("thermal_throttle", "off_bus", "ecc_storm", "power_spike")
STANDBY_FRACTION_OF_IDLE = 0.25
DEFAULT_WAKE_S = 30.0


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    kind: DeviceKind
    vendor: str
    model: str
    idle_w: float
    tdp_w: float
    min_cap_w: float
    peak_rate: float
    standby_w: float
    wake_s: float


@dataclass(frozen=True, slots=True)
class Phase:
    at_s: float
    beta: float
    util: float
    demand_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Stream:
    id: str
    demand_rate: float | None
    devices: tuple[str, ...]
    phases: tuple[Phase, ...]


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    duration_s: float
    device: str
    type: FaultType


@dataclass(frozen=True, slots=True)
class Objective:
    max_slowdown: float
    fleet_power_budget_w: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    tick_s: float
    seed: int
    objective: Objective
    devices: tuple[Device, ...]
    streams: tuple[Stream, ...]
    faults: tuple[Fault, ...] = ()

    @property
    def n_ticks(self) -> int:
        return round(self.duration_s / self.tick_s)

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.devices)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.streams)

    def device_index(self, device_id: str) -> int:
        return self.device_ids.index(device_id)


# ---------------------------------------------------------------------------------------------
# Loading


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario JSON file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read scenario file {p}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    try:
        return parse_scenario(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e


def bundled_scenario_names() -> list[str]:
    """Names of the scenarios shipped in ``accelpilot.optimizer/scenarios`` (file stems)."""
    root = resources.files("accelpilot.optimizer") / "scenarios"
    return sorted(f.name[: -len(".json")] for f in root.iterdir() if f.name.endswith(".json"))


def load_bundled_scenario(name: str) -> Scenario:
    """Load a shipped scenario by name (see :func:`bundled_scenario_names`)."""
    names = bundled_scenario_names()
    if name not in names:
        raise ConfigError(f"no bundled scenario {name!r}; choose one of {', '.join(names)}")
    with resources.as_file(resources.files("accelpilot.optimizer") / "scenarios") as root:
        return load_scenario(Path(root) / f"{name}.json")


# ---------------------------------------------------------------------------------------------
# Validation helpers: every failure names its JSON path.


def _fail(path: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}" if not problem.startswith(path) else problem)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _object(
    v: Any, path: str, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail(path, f"must be an object, got {type(v).__name__}")
    req, opt = tuple(required), tuple(optional)
    unknown = sorted(set(v) - set(req) - set(opt))
    if unknown:
        allowed = ", ".join(req + opt)
        raise _fail(path, f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: {allowed})")
    missing = [k for k in req if k not in v]
    if missing:
        raise _fail(path, f"missing required key(s) {', '.join(map(repr, missing))}")
    return dict(v)


def _number(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _fail(path, f"must be a finite number, got {v!r}")
    return float(v)


def _string(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, f"must be a non-empty string, got {v!r}")
    return v


def _list(v: Any, path: str, *, non_empty: bool = True) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(path, f"must be a list, got {type(v).__name__}")
    if non_empty and not v:
        raise _fail(path, "must not be empty")
    return v


def _check(ok: bool, path: str, problem: str) -> None:
    if not ok:
        raise _fail(path, problem)


# ---------------------------------------------------------------------------------------------
# The schema


def parse_scenario(data: Any) -> Scenario:
    """Validate an already-decoded JSON document and return the frozen :class:`Scenario`."""
    top = _object(
        data,
        "$",
        ("name", "duration_s", "tick_s", "seed", "objective", "devices", "streams"),
        ("faults",),
    )
    name = _string(top["name"], "name")
    duration_s = _number(top["duration_s"], "duration_s")
    tick_s = _number(top["tick_s"], "tick_s")
    _check(duration_s > 0, "duration_s", f"duration_s={_fmt(duration_s)} must be > 0")
    _check(tick_s > 0, "tick_s", f"tick_s={_fmt(tick_s)} must be > 0")
    n = duration_s / tick_s
    _check(
        abs(n - round(n)) <= 1e-9 * max(1.0, n),
        "duration_s",
        f"duration_s={_fmt(duration_s)} is not a whole number of ticks of tick_s={_fmt(tick_s)}",
    )
    _check(
        round(n) >= 1,
        "duration_s",
        f"duration_s={_fmt(duration_s)} is shorter than one tick_s={_fmt(tick_s)}",
    )
    seed = top["seed"]
    _check(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        "seed",
        f"seed must be an integer >= 0, got {seed!r}",
    )
    devices = tuple(
        _device(d, f"devices[{i}]") for i, d in enumerate(_list(top["devices"], "devices"))
    )
    ids = [d.id for d in devices]
    for i, did in enumerate(ids):
        _check(ids.index(did) == i, f"devices[{i}].id", f"devices[{i}].id={did!r} is a duplicate")
    known = set(ids)
    objective = _objective(top["objective"], devices)
    streams = tuple(
        _stream(s, f"streams[{i}]", known) for i, s in enumerate(_list(top["streams"], "streams"))
    )
    sids = [s.id for s in streams]
    for i, sid in enumerate(sids):
        _check(sids.index(sid) == i, f"streams[{i}].id", f"streams[{i}].id={sid!r} is a duplicate")
    faults = tuple(
        _fault(f, f"faults[{i}]", known)
        for i, f in enumerate(_list(top.get("faults", []), "faults", non_empty=False))
    )
    return Scenario(
        name=name,
        duration_s=duration_s,
        tick_s=tick_s,
        seed=seed,
        objective=objective,
        devices=devices,
        streams=streams,
        faults=faults,
    )


def _device(v: Any, path: str) -> Device:
    o = _object(
        v,
        path,
        ("id", "kind", "vendor", "model", "idle_w", "tdp_w", "min_cap_w", "peak_rate"),
        ("standby_w", "wake_s"),
    )
    kind = _string(o["kind"], f"{path}.kind")
    _check(
        kind in DEVICE_KINDS,
        f"{path}.kind",
        f"{path}.kind={kind!r} is not one of {', '.join(DEVICE_KINDS)}",
    )
    idle_w = _number(o["idle_w"], f"{path}.idle_w")
    tdp_w = _number(o["tdp_w"], f"{path}.tdp_w")
    min_cap_w = _number(o["min_cap_w"], f"{path}.min_cap_w")
    peak_rate = _number(o["peak_rate"], f"{path}.peak_rate")
    _check(idle_w >= 0, f"{path}.idle_w", f"{path}.idle_w={_fmt(idle_w)} must be >= 0")
    _check(
        tdp_w > idle_w,
        f"{path}.tdp_w",
        f"{path}.tdp_w={_fmt(tdp_w)} must be > idle_w={_fmt(idle_w)} (no dynamic range)",
    )
    _check(
        min_cap_w <= tdp_w,
        f"{path}.min_cap_w",
        f"{path}.min_cap_w={_fmt(min_cap_w)} > tdp_w={_fmt(tdp_w)}",
    )
    _check(
        min_cap_w > idle_w,
        f"{path}.min_cap_w",
        f"{path}.min_cap_w={_fmt(min_cap_w)} must be > idle_w={_fmt(idle_w)} "
        "(a cap at or below idle leaves no power for work)",
    )
    _check(peak_rate > 0, f"{path}.peak_rate", f"{path}.peak_rate={_fmt(peak_rate)} must be > 0")
    standby_w = STANDBY_FRACTION_OF_IDLE * idle_w
    if "standby_w" in o:
        standby_w = _number(o["standby_w"], f"{path}.standby_w")
        _check(
            0 <= standby_w <= idle_w,
            f"{path}.standby_w",
            f"{path}.standby_w={_fmt(standby_w)} must be in [0, idle_w={_fmt(idle_w)}]",
        )
    wake_s = DEFAULT_WAKE_S
    if "wake_s" in o:
        wake_s = _number(o["wake_s"], f"{path}.wake_s")
        _check(wake_s >= 0, f"{path}.wake_s", f"{path}.wake_s={_fmt(wake_s)} must be >= 0")
    return Device(
        id=_string(o["id"], f"{path}.id"),
        kind=kind,  # type: ignore[arg-type]
        vendor=_string(o["vendor"], f"{path}.vendor"),
        model=_string(o["model"], f"{path}.model"),
        idle_w=idle_w,
        tdp_w=tdp_w,
        min_cap_w=min_cap_w,
        peak_rate=peak_rate,
        standby_w=standby_w,
        wake_s=wake_s,
    )


def _objective(v: Any, devices: tuple[Device, ...]) -> Objective:
    o = _object(v, "objective", ("max_slowdown",), ("fleet_power_budget_w",))
    ms = _number(o["max_slowdown"], "objective.max_slowdown")
    _check(
        ms >= 1.0,
        "objective.max_slowdown",
        f"objective.max_slowdown={_fmt(ms)} must be >= 1 (1.10 allows a 10% slowdown)",
    )
    budget = o.get("fleet_power_budget_w")
    if budget is not None:
        budget = _number(budget, "objective.fleet_power_budget_w")
        floor = sum(d.min_cap_w for d in devices)
        _check(
            budget >= floor,
            "objective.fleet_power_budget_w",
            f"objective.fleet_power_budget_w={_fmt(budget)} < sum of min_cap_w={_fmt(floor)} "
            "(no cap setting can respect it)",
        )
    return Objective(max_slowdown=ms, fleet_power_budget_w=budget)


def _stream(v: Any, path: str, known: set[str]) -> Stream:
    o = _object(v, path, ("id", "devices", "phases"), ("demand_rate",))
    sid = _string(o["id"], f"{path}.id")
    devs = _list(o["devices"], f"{path}.devices")
    for j, d in enumerate(devs):
        p = f"{path}.devices[{j}]"
        _string(d, p)
        _check(d in known, p, f"{p}={d!r} is not a device id of this scenario")
        _check(devs.index(d) == j, p, f"{p}={d!r} is listed twice")
    demand = None
    if "demand_rate" in o:
        demand = _number(o["demand_rate"], f"{path}.demand_rate")
        _check(
            demand >= 0, f"{path}.demand_rate", f"{path}.demand_rate={_fmt(demand)} must be >= 0"
        )
    phases = tuple(
        _phase(p, f"{path}.phases[{j}]") for j, p in enumerate(_list(o["phases"], f"{path}.phases"))
    )
    _check(
        phases[0].at_s == 0,
        f"{path}.phases[0].at_s",
        f"{path}.phases[0].at_s={_fmt(phases[0].at_s)} must be 0 (the first phase starts the run)",
    )
    for j in range(1, len(phases)):
        _check(
            phases[j].at_s > phases[j - 1].at_s,
            f"{path}.phases[{j}].at_s",
            f"{path}.phases[{j}].at_s={_fmt(phases[j].at_s)} must be > "
            f"phases[{j - 1}].at_s={_fmt(phases[j - 1].at_s)} (phases are sorted by time)",
        )
    _check(
        demand is not None or phases[0].demand_rate is not None,
        f"{path}.demand_rate",
        f"{path}.demand_rate is missing and phases[0] does not set demand_rate either",
    )
    return Stream(id=sid, demand_rate=demand, devices=tuple(devs), phases=phases)


def _phase(v: Any, path: str) -> Phase:
    o = _object(v, path, ("at_s", "beta", "util"), ("demand_rate",))
    at_s = _number(o["at_s"], f"{path}.at_s")
    beta = _number(o["beta"], f"{path}.beta")
    util = _number(o["util"], f"{path}.util")
    _check(at_s >= 0, f"{path}.at_s", f"{path}.at_s={_fmt(at_s)} must be >= 0")
    _check(0 < beta <= 1, f"{path}.beta", f"{path}.beta={_fmt(beta)} must be in (0, 1]")
    _check(0 < util <= 1, f"{path}.util", f"{path}.util={_fmt(util)} must be in (0, 1]")
    demand = None
    if "demand_rate" in o:
        demand = _number(o["demand_rate"], f"{path}.demand_rate")
        _check(
            demand >= 0, f"{path}.demand_rate", f"{path}.demand_rate={_fmt(demand)} must be >= 0"
        )
    return Phase(at_s=at_s, beta=beta, util=util, demand_rate=demand)


def _fault(v: Any, path: str, known: set[str]) -> Fault:
    o = _object(v, path, ("at_s", "device", "type", "duration_s"))
    at_s = _number(o["at_s"], f"{path}.at_s")
    duration_s = _number(o["duration_s"], f"{path}.duration_s")
    _check(at_s >= 0, f"{path}.at_s", f"{path}.at_s={_fmt(at_s)} must be >= 0")
    _check(
        duration_s > 0, f"{path}.duration_s", f"{path}.duration_s={_fmt(duration_s)} must be > 0"
    )
    dev = _string(o["device"], f"{path}.device")
    _check(
        dev in known, f"{path}.device", f"{path}.device={dev!r} is not a device id of this scenario"
    )
    ftype = _string(o["type"], f"{path}.type")
    _check(
        ftype in FAULT_TYPES,
        f"{path}.type",
        f"{path}.type={ftype!r} is not one of {', '.join(FAULT_TYPES)}",
    )
    return Fault(at_s=at_s, duration_s=duration_s, device=dev, type=ftype)  # type: ignore[arg-type]
