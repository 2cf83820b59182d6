"""The console's FastAPI app: the JSON API under ``/api`` and the static page at ``/``.

Reads go to a :class:`~accelpilot.console.source.ConsoleSource` (history, events, audit) and to
the running :class:`~accelpilot.demo.Demo` (inventory, live state, recommendations, score);
actions go to the demo's operator methods, which sign them and hand them to each host's
actuator exactly as the optimizer's are. Over the real pipeline (no demo) the console is
read-only, or, given a :class:`~accelpilot.console.steering.PipelineSteering`, its power-cap and
load sliders publish signed actions to ``fleet.actions``. Every request body is a pydantic
model that forbids unknown fields; a refused request gets a 4xx ``{"detail": reason}`` and
changes nothing. OpenAPI: ``/docs`` and ``/openapi.json``. Auth: :mod:`accelpilot.console.auth`.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from accelpilot.collectors.device import host_of
from accelpilot.console.auth import Auth, Principal
from accelpilot.console.errors import ConflictError, ConsoleRequestError, NotFoundError
from accelpilot.console.source import ConsoleSource
from accelpilot.console.steering import PipelineSteering, action_dict
from accelpilot.demo import Demo
from accelpilot.schemas.action_results import ActionResult

STATIC = resources.files("accelpilot.console") / "static"
MAX_HISTORY_S = 3600.0


# -- request bodies ----------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PowerCapRequest(_Body):
    """Exactly one target (``device_ids``, ``host_id`` or ``stream_id``) and exactly one of
    ``cap_w`` (absolute, must lie in every target's limits) or ``fraction_of_tdp`` (each
    device's TDP times this, clamped into its limits: the group slider)."""

    device_ids: list[str] | None = Field(None, min_length=1, max_length=10_000)
    host_id: str | None = None
    stream_id: str | None = None
    cap_w: FiniteFloat | None = Field(None, gt=0, le=5000)
    fraction_of_tdp: FiniteFloat | None = Field(None, gt=0, le=1)


class FleetBudgetRequest(_Body):
    """``budget_w`` bounds the sum of every device's cap; ``null`` removes the bound."""

    budget_w: FiniteFloat | None = Field(..., gt=0)


class LoadWeightsRequest(_Body):
    """Relative shares of ``stream_id``'s work per device (devices not named get 0)."""

    stream_id: str
    weights: dict[str, Annotated[FiniteFloat, Field(ge=0, le=1e6)]] = Field(..., min_length=1)


class ReleaseRequest(_Body):
    """Give pinned devices (a list, a host), a stream, or (``all``) everything back to the
    optimizer."""

    device_ids: list[str] | None = Field(None, min_length=1)
    host_id: str | None = None
    stream_id: str | None = None
    all: bool = False


class ModeRequest(_Body):
    mode: Literal["auto", "advise"]


# -- helpers -----------------------------------------------------------------------------------
def _num(x: Any) -> Any:
    """numpy scalars and non-finite floats to JSON-safe values."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _results(results: list[ActionResult]) -> dict[str, Any]:
    items = [msgspec.structs.asdict(r) for r in results]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return {"results": items, "outcomes": outcomes}


def _viewer(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    auth: Auth = request.app.state.auth
    who = auth.principal(authorization)
    if who is None:
        raise HTTPException(
            401,
            "a token is required: send 'Authorization: Bearer <token>' (console.tokens)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return who


def _operator(who: Annotated[Principal, Depends(_viewer)]) -> Principal:
    if not who.can_act:
        raise HTTPException(403, f"{who.name} has the viewer role; actions need operator")
    return who


Viewer = Annotated[Principal, Depends(_viewer)]
Operator = Annotated[Principal, Depends(_operator)]


READ_ONLY = (
    "read-only console (real-pipeline mode): steering, recommendations, the score and the "
    "failure-risk ranking live in `accelpilot demo` only"
)


def _published(actions: list[Any], topic: str) -> dict[str, Any]:
    """A steering answer over the real pipeline: the actions are on the topic; their outcomes
    arrive later (fleet.action-results -> InfluxDB -> /api/audit)."""
    return {
        "published": [action_dict(a) for a in actions],
        "topic": topic,
        "results": [],
        "outcomes": {"published": len(actions)},
    }


def create_app(
    demo: Demo | None,
    source: ConsoleSource,
    auth: Auth,
    steering: PipelineSteering | None = None,
) -> FastAPI:
    """The console over ``source``; with a ``demo`` it also steers it. Without one (the
    real-pipeline mode) it is read-only (control endpoints answer 409), unless ``steering`` is
    given: then the power-cap and load-weight sliders publish signed actions to
    ``fleet.actions``; the demo-only views and controls still answer 409."""
    if demo is not None and steering is not None:
        raise ValueError("steering is for the real-pipeline mode (no demo)")
    app = FastAPI(
        title="accelpilot console",
        version="1",
        description=(
            "The operator's console of an accelerator fleet: inventory, history, alerts, "
            "failure risk, optimizer recommendations, power/load controls (each a signed "
            "action), efficiency score and the audit trail. When the console is bound to a "
            "non-loopback address every /api call needs `Authorization: Bearer <token>`; "
            "POST calls need the operator role."
        ),
    )

    app.state.auth = auth

    @app.exception_handler(ConsoleRequestError)
    async def _refused(request: Request, exc: ConsoleRequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only where and what: the offending input may not even be JSON (NaN, Infinity).
        errors = [
            {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
            for e in jsonable_encoder(exc.errors(), custom_encoder={float: repr})
        ]
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors
        )
        return JSONResponse({"detail": reason, "errors": errors}, status_code=422)

    def need() -> Demo:
        if demo is None:
            if steering is not None:
                raise ConflictError(
                    "real-pipeline console: recommendations, the score, the failure-risk "
                    "ranking, the fleet budget, pins and the optimizer's mode live in "
                    "`accelpilot demo` only (see docs/console.md)"
                )
            raise ConflictError(READ_ONLY)
        return demo

    def steer() -> PipelineSteering:
        """The real-pipeline steering (called only without a demo)."""
        if steering is None:
            raise ConflictError(READ_ONLY)
        return steering

    def known(device_id: str) -> dict[str, Any] | None:
        """The fleet description's limits and streams of a device (steering only)."""
        return steering.device(device_id) if steering is not None else None

    def read_only_inventory(latest: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for d, row in sorted(latest.items()):
            k = known(d)
            limits = (
                {"min_w": k["min_cap_w"], "max_w": k["tdp_w"], "default_w": k["tdp_w"]}
                if k is not None
                else None
            )
            out.append(
                {
                    "device_id": d,
                    "host_id": row.get("host_id") or host_of(d),
                    "kind": row.get("kind"),
                    "vendor": None,
                    "model": None,
                    "backend": None,
                    "memory_total_bytes": None,
                    "capabilities": {"power_limits": limits},
                    "streams": k["streams"] if k is not None else [],
                }
            )
        return out

    # -- reads -------------------------------------------------------------------------------
    @app.get("/api/status", tags=["fleet"])
    def status(who: Viewer) -> dict[str, Any]:
        """Scenario, tick, mode, budget, pins and headline numbers."""
        you = {"name": who.name, "role": who.role}
        if demo is None:
            latest = source.latest()
            alerts = source.alerts(200)
            out = {
                "read_only": steering is None,
                "pipeline": True,
                "scenario": None,
                "mode": "read-only" if steering is None else "manual",
                "data_ts_ns": source.newest_ts_ns(),
                "fleet_power_w": sum(r["power_w"] or 0.0 for r in latest.values()),
                "fleet_caps_w": sum(r["cap_w"] or 0.0 for r in latest.values()),
                "hosts": len({r.get("host_id") for r in latest.values()}),
                "devices": len(latest),
                "alerts_firing": sum(a.state == "firing" for a in alerts),
                "you": you,
                "auth_required": auth.required,
            }
            if steering is not None:
                out["steering"] = steering.describe()
                out["fleet_tdp_w"] = float(steering.facts.tdp_w.sum())
                out["fleet_min_cap_w"] = float(steering.facts.min_cap_w.sum())
            return out
        f = demo.facts
        with demo.lock:
            last = demo.fleet.last
            power = float(np.nansum(last.telemetry.power_w)) if last is not None else None
            firing = {a.id: a for a in demo.alerts}
            return {
                "read_only": False,
                "scenario": demo.scenario.name,
                "tick": demo.ticks,
                "tick_s": demo.scenario.tick_s,
                "data_ts_ns": source.newest_ts_ns(),
                "mode": demo.mode,
                "policy": demo.optimizer_issuer,
                "fleet_power_w": power,
                "fleet_caps_w": float(demo.fleet.caps_w.sum()),
                "fleet_tdp_w": float(f.tdp_w.sum()),
                "fleet_min_cap_w": float(f.min_cap_w.sum()),
                "budget_w": demo.budget_w,
                "pinned_devices": sorted(f.device_ids[i] for i in demo.cap_pins),
                "pinned_streams": sorted(f.stream_ids[s] for s in demo.stream_pins),
                "hosts": len(demo.hosts),
                "devices": len(f.device_ids),
                "device_samples": demo.pipeline.counts.device_samples,
                "dead_letters": demo.pipeline.counts.dead_letters,
                "aggregates": demo.pipeline.counts.aggregates,
                "alerts_firing": sum(a.state == "firing" for a in firing.values()),
                "actions": len(demo.results),
                "you": you,
                "auth_required": auth.required,
            }

    @app.get("/api/inventory", tags=["fleet"])
    def inventory(who: Viewer) -> dict[str, Any]:
        """Every accelerator as discovered: kind, vendor, model, memory, capabilities (read-only
        mode: the devices seen in the last 10 s, with what InfluxDB holds of them)."""
        if demo is None:
            devices = read_only_inventory(source.latest())
            return {"hosts": sorted({d["host_id"] for d in devices}), "devices": devices}
        f = demo.facts
        out = []
        for d in demo.devices:
            i = f.device_ids.index(d.device_id)
            out.append(
                {
                    **d.to_dict(),
                    "host_id": host_of(d.device_id),
                    "streams": [
                        f.stream_ids[s] for s in np.flatnonzero(f.membership[:, i]).tolist()
                    ],
                }
            )
        return {"hosts": sorted(demo._hosts_by_id), "devices": out}

    @app.get("/api/live", tags=["fleet"])
    def live(who: Viewer) -> dict[str, Any]:
        """Newest reading of every device, with its commanded cap, pin, standby and risk."""
        latest = source.latest()
        if demo is None:
            return {
                "devices": {
                    d: {
                        **{k: _num(v) for k, v in row.items()},
                        "commanded_cap_w": row.get("cap_w"),
                        "min_cap_w": (known(d) or {}).get("min_cap_w"),
                        "tdp_w": (known(d) or {}).get("tdp_w"),
                        "pinned": False,
                        "parked": False,
                        "reporting": row.get("power_w") is not None,
                        "risk": None,
                    }
                    for d, row in latest.items()
                }
            }
        f = demo.facts
        with demo.lock:
            risk = demo.monitor.risk
            scores = risk.risk()
            out = {}
            for i, d in enumerate(f.device_ids):
                row = latest.get(d, {})
                r = risk.index.get(d)
                out[d] = {
                    **{k: _num(v) for k, v in row.items()},
                    "commanded_cap_w": float(demo.fleet.caps_w[i]),
                    "min_cap_w": float(f.min_cap_w[i]),
                    "tdp_w": float(f.tdp_w[i]),
                    "pinned": i in demo.cap_pins,
                    "parked": bool(demo.fleet.standby[i]),
                    "reporting": row.get("power_w") is not None,
                    "risk": float(scores[r]) if r is not None and r < len(scores) else 0.0,
                }
            return {"tick": demo.ticks, "devices": out}

    @app.get("/api/history/device", tags=["history"])
    def device_history(
        who: Viewer,
        device_id: Annotated[str, Query(description="e.g. node0/gpu0")],
        seconds: Annotated[float, Query(gt=0, le=MAX_HISTORY_S)] = 300.0,
    ) -> dict[str, Any]:
        """Power, cap, temperature, utilization, memory and work rate of one device (``null`` =
        not reported)."""
        if demo is not None and device_id not in demo.facts.device_ids:
            raise NotFoundError(f"unknown device {device_id!r}; see /api/inventory")
        return {"device_id": device_id, **source.device_history(device_id, seconds)}

    @app.get("/api/history/host", tags=["history"])
    def host_history(
        who: Viewer,
        host_id: str,
        seconds: Annotated[float, Query(gt=0, le=MAX_HISTORY_S)] = 300.0,
    ) -> dict[str, Any]:
        """One host's series: power, cap, memory and work summed; temperature and utilization
        averaged over its devices."""
        if demo is not None and host_id not in demo._hosts_by_id:
            raise NotFoundError(f"unknown host {host_id!r}; hosts: {sorted(demo._hosts_by_id)}")
        return {"host_id": host_id, **source.host_history(host_id, seconds)}

    @app.get("/api/aggregates", tags=["history"])
    def aggregates(
        who: Viewer,
        scope: Literal["device", "host", "fleet"],
        key: str,
        window_s: Annotated[float, Query(gt=0)] = 10.0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 60,
    ) -> dict[str, Any]:
        """Windowed statistics from the pipeline's aggregation stage (10 s and 60 s windows)."""
        rows = source.aggregates(scope, key, window_s, limit)
        return {"aggregates": [msgspec.to_builtins(a) for a in rows]}

    @app.get("/api/alerts", tags=["events"])
    def alerts(who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """Latest state of each alert episode (firing first), with its reason and evidence."""
        items = source.alerts(limit)
        items.sort(key=lambda a: (a.state != "firing", a.severity != "critical", -a.ts_ns))
        return {"alerts": [msgspec.to_builtins(a) for a in items]}

    @app.get("/api/anomalies", tags=["events"])
    def anomalies(who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """Newest detector scores with their evidence."""
        return {"anomalies": [msgspec.to_builtins(a) for a in source.anomalies(limit)]}

    @app.get("/api/risk", tags=["events"])
    def risk(who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
        """Devices ranked by failure risk (0..1), with the rules that contribute."""
        dm = need()
        with dm.lock:
            r = dm.monitor.risk
            scores = r.risk()
            order = np.argsort(-scores, kind="stable")[:limit].tolist()
            evidence = r.evidence(order)
            ranking = [
                {
                    "device_id": r.device_ids[j],
                    "risk": float(scores[j]),
                    "rules": {k: float(v) for k, v in ev},
                }
                for j, ev in zip(order, evidence, strict=True)
            ]
        return {"ranking": ranking}

    @app.get("/api/streams", tags=["fleet"])
    def streams(who: Viewer) -> dict[str, Any]:
        """Each stream's devices and their current load weights (normalized shares; over the
        real pipeline even shares, ``weights_known`` false: InfluxDB does not hold them)."""
        if demo is None and steering is not None:
            return {"streams": steering.streams()}
        dm = need()
        with dm.lock:
            out = []
            for s, sid in enumerate(dm.facts.stream_ids):
                members = np.flatnonzero(dm.facts.membership[s]).tolist()
                row = dm.fleet.weights[s]
                total = float(row.sum()) or 1.0
                out.append(
                    {
                        "stream_id": sid,
                        "pinned": s in dm.stream_pins,
                        "weights": {dm.facts.device_ids[d]: float(row[d]) / total for d in members},
                    }
                )
        return {"streams": out}

    @app.get("/api/recommendations", tags=["optimizer"])
    def recommendations(who: Viewer) -> dict[str, Any]:
        """Open recommendations of the optimizer (advise mode), with expected savings."""
        dm = need()
        with dm.lock:
            recs = [r.to_dict() for r in dm.advisor.open.values()]
            known = [
                r.savings.power_w for r in dm.advisor.open.values() if r.savings.power_w is not None
            ]
            return {
                "mode": dm.mode,
                # A stream's load distribution first (it decides whether the SLO holds), then
                # by expected savings.
                "recommendations": sorted(
                    recs,
                    key=lambda r: (
                        r["kind"] != "set_load_weights",
                        -(r["expected_savings_w"] or 0),
                    ),
                ),
                "expected_savings_w": float(sum(known)),
                "accepted_total": dm.advisor.accepted_total,
                "dismissed_total": dm.advisor.dismissed_total,
            }

    @app.get("/api/score", tags=["score"])
    def score(who: Viewer) -> dict[str, Any]:
        """Energy saved against the max-power baseline (shadow simulator), streaks, badges."""
        dm = need()
        with dm.lock:
            out = {k: _num(v) for k, v in dm.score.to_dict().items()}
            last = dm.fleet.last
            violated = [] if last is None else np.flatnonzero(last.truth.slo_violated).tolist()
            out["slo_violated_streams"] = [dm.facts.stream_ids[s] for s in violated]
            return out

    @app.get("/api/audit", tags=["audit"])
    def audit(who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Every action (who or what issued it, signed, each device's outcome) and the
        operator's console events, newest first."""
        events: list[dict[str, Any]] = []
        if demo is not None:
            with demo.lock:
                events = list(reversed(demo.events[-limit:]))
        actions = source.actions(limit)
        if steering is not None:
            actions = steering.annotate(actions, limit)
        return {"actions": actions, "events": events}

    @app.get("/api/audit/verify", tags=["audit"])
    def audit_verify(who: Viewer) -> dict[str, Any]:
        """Check each host's hash-chained audit log end to end."""
        dm = need()
        from accelpilot.collectors.audit_log import verify

        out = {}
        with dm.lock:
            for h in dm.hosts:
                v = verify(h.actuator.audit.path)
                out[h.host_id] = {"ok": v.ok, "first_bad_line": v.first_bad_line}
        return {"hosts": out}

    # -- actions -----------------------------------------------------------------------------
    @app.post("/api/actions/power-cap", tags=["actions"])
    def power_cap(body: PowerCapRequest, who: Operator) -> dict[str, Any]:
        """Set the power cap of a device or a group (signed actions; the devices are pinned in
        the demo; over the real pipeline published to fleet.actions, no pin)."""
        if demo is None:
            st = steer()
            idx = st.resolve_devices(body.device_ids, body.host_id, body.stream_id)
            actions = st.set_caps(
                who.name, idx, cap_w=body.cap_w, fraction_of_tdp=body.fraction_of_tdp
            )
            return _published(actions, st.topic)
        dm = need()
        idx = dm.resolve_devices(body.device_ids, body.host_id, body.stream_id)
        results = dm.operator_set_caps(
            who.name, idx, cap_w=body.cap_w, fraction_of_tdp=body.fraction_of_tdp
        )
        return _results(results)

    @app.post("/api/actions/fleet-budget", tags=["actions"])
    def fleet_budget(body: FleetBudgetRequest, who: Operator) -> dict[str, Any]:
        """Bound the sum of all caps; caps above it are lowered now (signed actions). Demo only:
        over the real pipeline the optimizer's budget is its fleet description's."""
        if demo is None and steering is not None:
            raise ConflictError(
                "no fleet budget over the real pipeline: a budget bounds the optimizer's caps "
                "from then on, and `accelpilot optimizer run` is another process; give it the "
                "budget in its fleet description (objective.fleet_power_budget_w), or cap "
                "hosts and groups here"
            )
        dm = need()
        return _results(dm.operator_set_budget(who.name, body.budget_w))

    @app.post("/api/actions/load-weights", tags=["actions"])
    def load_weights(body: LoadWeightsRequest, who: Operator) -> dict[str, Any]:
        """Distribute a stream's load over its devices (signed actions; the stream is pinned in
        the demo; over the real pipeline published to fleet.actions, no pin)."""
        if demo is None:
            st = steer()
            return _published(st.set_weights(who.name, body.stream_id, body.weights), st.topic)
        dm = need()
        return _results(dm.operator_set_weights(who.name, body.stream_id, body.weights))

    @app.post("/api/actions/release", tags=["actions"])
    def release(body: ReleaseRequest, who: Operator) -> dict[str, Any]:
        """Hand pinned devices or a stream back to the optimizer (no action is signed)."""
        if demo is None and steering is not None:
            raise ConflictError(
                "nothing is pinned over the real pipeline: `accelpilot optimizer run` (auto "
                "mode) may change an operator's cap or weights at its next decision window"
            )
        dm = need()
        if body.all:
            if body.device_ids or body.host_id or body.stream_id:
                raise HTTPException(422, "all=true takes no other target")
            dm.operator_release(who.name)
        elif body.stream_id is not None and not (body.device_ids or body.host_id):
            dm.operator_release(who.name, stream_id=body.stream_id)
        else:
            dm.operator_release(who.name, dm.resolve_devices(body.device_ids, body.host_id))
        return status(who)

    @app.post("/api/mode", tags=["optimizer"])
    def mode(body: ModeRequest, who: Operator) -> dict[str, Any]:
        """``auto``: the optimizer acts; ``advise``: it recommends, the operator decides."""
        dm = need()
        dm.operator_set_mode(who.name, body.mode)
        return {"mode": dm.mode}

    @app.post("/api/recommendations/accept-all", tags=["optimizer"])
    def accept_all(who: Operator) -> dict[str, Any]:
        """Apply every open recommendation now (signed, the operator as issuer)."""
        dm = need()
        if dm.mode != "advise":
            raise ConflictError("the optimizer is in auto mode: there is nothing to accept")
        if not dm.advisor.open:
            raise ConflictError("no recommendation is open right now")
        n, results = dm.accept_all(who.name)
        return {"accepted": n, **_results(results)}

    @app.post("/api/recommendations/{rec_id}/accept", tags=["optimizer"])
    def accept(rec_id: Annotated[str, Path(max_length=64)], who: Operator) -> dict[str, Any]:
        """Apply a recommendation now, signed with the operator as issuer."""
        dm = need()
        rec, results = dm.accept(who.name, rec_id)
        return {"recommendation": rec.to_dict(), **_results(results)}

    @app.post("/api/recommendations/{rec_id}/dismiss", tags=["optimizer"])
    def dismiss(rec_id: Annotated[str, Path(max_length=64)], who: Operator) -> dict[str, Any]:
        """Hide a recommendation until the optimizer's target for it changes materially."""
        dm = need()
        return {"recommendation": dm.dismiss(who.name, rec_id).to_dict()}

    # -- the page ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
