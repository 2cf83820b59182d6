"""One tick's fleet optimum: caps, load shares and standby minimizing joules per work unit.

Used by the oracle (with the true phase parameters and faults) and by the learned policy (with
its estimates). The math is derived in docs/optimizer.md; in short:

* A device serving rate ``r`` of one stream at the smallest cap that delivers it draws
  ``idle + f(r)`` with ``f`` convex and increasing: linear ``a·r`` up to ``R_lo = R(min_cap)``,
  then ``u·D·(r / (pk·u))^(1/β)`` up to ``R_max = R(tdp)``. Its cap is then
  ``idle + u·D·max(x_lo, (r / (pk·u))^(1/β))`` (convex too).
* For a fixed *configuration* (each device parked, working for exactly one stream, or time-shared
  between two of its streams) the tick's
  problem ``min E(r) / W(r)`` subject to the SLO ``L_s ≤ Σ r ≤ demand_s``, ``0 ≤ r ≤ R_max`` and
  the budget ``Σ caps ≤ B`` is a convex-over-linear fractional program: Dinkelbach iterations,
  each a separable convex problem solved by per-stream water-filling on the marginal price
  (bisection in log-price, ties on linear segments filled greedily), the budget by a multiplier.
* A device that serves several active streams may also be *time-shared* between two of them
  (the simulator's ``physics.time_share``): one cap ``c`` for both, a fraction ``phi`` of the
  tick for the first stream and ``1 - phi`` for the second. For fixed ``(c, phi)`` each part is
  a fixed-cap device (linear cost ``a_s(c)·r`` up to ``phi_s·R_s(c)``), so the convex machinery
  above is unchanged; ``(c, phi)`` come from a grid (``SHARE_CAP_LEVELS`` x ``SHARE_SPLITS``).
  Enumerating shares with the other options would multiply the configurations by
  ``1 + 12 x (stream pairs)`` per shareable device, so they are *share moves*: the best
  ``SHARE_FROM`` single-stream configurations, each with one device moved to each of its shares
  (method ``+share-moves``).
  A time-shared stream with a working device of its own gives it the share the plan does not
  serve; one served by shared parts only (its one device is shared) is planned at its whole
  demand, so its weight on the part asks the device for exactly what the plan gives it
  (generated-518). Such a stream gives LearnedPolicy no reading of its own (it learns from
  devices serving one stream), so its solve takes those configurations only when no other
  meets the SLO (``sole_shares_last``). Without sharing a device served one stream per tick,
  and a stream that needs part of a device another stream also needs was starved
  (generated-302). Internally each shareable device gets one *virtual column* per stream it
  may serve.
* Configurations are enumerated exactly, up to symmetry (identical devices are interchangeable,
  so only *how many* of a class take each option matters). Past ``max_configs`` the solver falls
  back to a documented relaxation: local search over single-device moves from "all awake".

All configurations are solved at once (arrays ``(configs, devices)``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.facts import FleetFacts

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

PARK = -1  # configuration code: device in standby
DOWN = -2  # device cannot work this tick (off the bus, waking): draws idle_w
IDLE = -3  # device kept awake without work (TickModel.awake): draws idle_w, never a share sink
SHARED = -4  # device time-shared between two streams: draws idle_w, its work is on virtual columns
VOID = -5  # a virtual column the configuration does not use
# Time-sharing grid: the cap at these fractions of [min_cap_w, tdp_w] (a fixed cap stays fixed),
# the first stream's fraction of the tick at these splits.
SHARE_CAP_LEVELS = (1.0 / 3.0, 2.0 / 3.0, 1.0)
SHARE_SPLITS = (0.2, 0.4, 0.6, 0.8)
SHARE_FROM = 8  # single-stream configurations the share moves start from
_SHARE_BASE = -100  # option codes <= this encode (stream pair, cap level, split)
_SHARE_TIME = 1.0 - 1e-9  # the two parts' fractions sum to this, so rounding never overfills
MAX_CONFIGS = 4096
BETA_MAX = 1.0 - 1e-6
SLO_MARGIN = 1e-6  # relative: served ≥ slo·(1 + margin) so rounding never reads as a violation
_BISECT = 64
_DINKELBACH_TOL = 1e-10
_NU_BISECT = 40


@dataclass(frozen=True, slots=True, eq=False)
class TickModel:
    """What the solver assumes about one tick (true for the oracle, estimated for a policy).

    Per stream: ``util``, ``beta`` of the active phase, ``demand_rate``, ``slo_rate`` (the least
    it must be served). Per device: ``rate_factor`` (1, or 0.8 in an ECC storm), ``fixed_cap_w``
    (NaN = free; ``min_cap_w`` while thermally throttled, ``tdp_w`` for a device pinned by the
    safety envelope), ``down`` (cannot work, draws ``idle_w``: off the bus or waking) and
    ``parked`` (in standby and staying there this tick); ``awake`` (optional): devices that
    must not be parked this tick (a policy keeps them for headroom), so they work or idle.
    """

    util: Array
    beta: Array
    demand_rate: Array
    slo_rate: Array
    rate_factor: Array
    fixed_cap_w: Array
    down: Mask
    parked: Mask
    awake: Mask | None = None

    def key(self) -> bytes:
        parts: tuple[NDArray[np.generic], ...] = (
            self.util,
            self.beta,
            self.demand_rate,
            self.slo_rate,
            self.rate_factor,
            np.nan_to_num(self.fixed_cap_w, nan=-1.0),
            self.down,
            self.parked,
        )
        if self.awake is not None:
            parts = (*parts, self.awake)
        return b"|".join(np.ascontiguousarray(p).tobytes() for p in parts)


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """The solver's answer: controls plus what it expects them to yield."""

    caps_w: Array
    weights: Array
    standby: Mask
    rate: Array  # (devices,) planned work rate (a shared device: both streams' together)
    assign: NDArray[np.int64]  # (devices,) stream index (a shared device: its larger part), PARK...
    shared: Mask  # (devices,) time-shared between two streams this tick
    power_w: float
    work_rate: float
    method: str  # "exact" or "local-search", "+share-moves" where a device can be shared
    configs: int
    feasible: bool

    @property
    def j_per_unit(self) -> float:
        return self.power_w / self.work_rate if self.work_rate > 0 else math.inf


def solve(
    facts: FleetFacts,
    model: TickModel,
    *,
    max_configs: int = MAX_CONFIGS,
    sole_shares_last: bool = False,
) -> Plan:
    """The tick's optimum (see the module docstring). ``sole_shares_last``: a configuration
    that serves a stream by time-shared parts only is picked only when no other meets the SLO
    (LearnedPolicy: such a stream gives no reading of its own, see the module docstring)."""
    opts = _options(facts, model)
    single = [tuple(v for v in o if v > _SHARE_BASE) for o in opts]
    classes = _classes(facts, model, single)
    n_conf = 1
    for devs, o in classes:
        n_conf *= math.comb(len(devs) + len(o) - 1, len(o) - 1)
    batch = _Batch(facts, model, opts, sole_shares_last=sole_shares_last)
    if n_conf <= max_configs:
        assign = _enumerate(classes, facts.n_devices)
        method = "exact"
    else:
        assign = _local_search(batch, single)
        method = "local-search"
    res = batch.solve(assign)
    best = _pick(res)
    if batch.virtual.any():
        shared = _share_moves(assign, res, opts, classes)
        res_sh = batch.solve(shared)
        best_sh = _pick(res_sh)
        method += "+share-moves"
        if _score(res_sh, best_sh) < _score(res, best):
            assign, res, best = shared, res_sh, best_sh
    return _realize(batch, assign[best : best + 1], res, best, method, len(assign))


def _share_moves(
    assign: NDArray[np.int64],
    res: _Result,
    opts: list[tuple[int, ...]],
    classes: list[tuple[list[int], tuple[int, ...]]],
) -> NDArray[np.int64]:
    """The best ``SHARE_FROM`` single-stream configurations, each with one device moved to each
    of its time-sharing options (see the module docstring). Identical devices are
    interchangeable, so each class's codes are sorted and repeats dropped."""
    top = np.argsort(_scores(res), kind="stable")[:SHARE_FROM]
    rows = []
    for i in top:
        for d, o in enumerate(opts):
            for v in o:
                if v <= _SHARE_BASE:
                    row = assign[i].copy()
                    row[d] = v
                    rows.append(row)
    out = np.array(rows, dtype=np.int64)
    for devs, _ in classes:
        if len(devs) > 1:
            out[:, devs] = np.sort(out[:, devs], axis=1)
    return np.unique(out, axis=0)


# ---------------------------------------------------------------------------------------------
# Configurations


def _options(facts: FleetFacts, m: TickModel) -> list[tuple[int, ...]]:
    active = m.demand_rate > 0
    out = []
    for d in range(facts.n_devices):
        if m.down[d]:
            out.append((DOWN,))
        elif m.parked[d]:
            out.append((PARK,))
        else:
            streams = [s for s in range(facts.n_streams) if active[s] and facts.membership[s, d]]
            keep = m.awake is not None and bool(m.awake[d])
            shares = _share_codes(facts.n_streams, streams, fixed=not np.isnan(m.fixed_cap_w[d]))
            out.append((IDLE if keep else PARK, *streams, *shares))
    return out


def _share_codes(n_streams: int, streams: list[int], *, fixed: bool) -> list[int]:
    """Option codes of every way to time-share a device between two of ``streams`` (device
    independent, so identical devices stay interchangeable). A fixed cap has one level."""
    levels = [len(SHARE_CAP_LEVELS) - 1] if fixed else range(len(SHARE_CAP_LEVELS))
    return [
        _share_code(n_streams, s, t, k, j)
        for s, t in itertools.combinations(streams, 2)
        for k in levels
        for j in range(len(SHARE_SPLITS))
    ]


def _share_code(n_streams: int, s: int, t: int, k: int, j: int) -> int:
    pair = s * n_streams + t
    return _SHARE_BASE - (pair * len(SHARE_CAP_LEVELS) + k) * len(SHARE_SPLITS) - j


def _share_decode(
    n_streams: int, code: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``(s, t, cap level, split)`` of share codes (arrays)."""
    n = _SHARE_BASE - code
    j = n % len(SHARE_SPLITS)
    n //= len(SHARE_SPLITS)
    k = n % len(SHARE_CAP_LEVELS)
    pair = n // len(SHARE_CAP_LEVELS)
    return pair // n_streams, pair % n_streams, k, j


def _classes(
    facts: FleetFacts, m: TickModel, opts: list[tuple[int, ...]]
) -> list[tuple[list[int], tuple[int, ...]]]:
    groups: dict[tuple[object, ...], list[int]] = {}
    fixed = np.nan_to_num(m.fixed_cap_w, nan=-1.0)
    for d in range(facts.n_devices):
        key = (
            opts[d],
            facts.idle_w[d],
            facts.tdp_w[d],
            facts.min_cap_w[d],
            facts.peak_rate[d],
            facts.standby_w[d],
            m.rate_factor[d],
            fixed[d],
        )
        groups.setdefault(key, []).append(d)
    return [(devs, key[0]) for key, devs in groups.items()]  # type: ignore[misc]


def _enumerate(classes: list[tuple[list[int], tuple[int, ...]]], n_dev: int) -> NDArray[np.int64]:
    per_class = []
    for devs, o in classes:
        rows = [
            [o[i] for i in combo]
            for combo in itertools.combinations_with_replacement(range(len(o)), len(devs))
        ]
        per_class.append((devs, rows))
    combos = list(itertools.product(*(rows for _, rows in per_class)))
    out = np.empty((len(combos), n_dev), dtype=np.int64)
    for c, combo in enumerate(combos):
        for (devs, _), row in zip(per_class, combo, strict=True):
            out[c, devs] = row
    return out


def _local_search(batch: _Batch, opts: list[tuple[int, ...]]) -> NDArray[np.int64]:
    """Relaxation for large fleets: start all awake (each device on its first stream), apply the
    best single-device option change while it lowers J/unit; return the visited configurations."""
    cur = np.array([o[1] if len(o) > 1 else o[0] for o in opts], dtype=np.int64)
    seen = [cur.copy()]
    best = _score(batch.solve(cur[None, :]), 0)
    for _ in range(4 * len(opts)):
        cands = []
        for d, o in enumerate(opts):
            for v in o:
                if v != cur[d]:
                    c = cur.copy()
                    c[d] = v
                    cands.append(c)
        if not cands:
            break
        arr = np.array(cands)
        res = batch.solve(arr)
        scores = _scores(res)
        i = int(np.argmin(scores))
        if scores[i] >= best:
            break
        best, cur = scores[i], arr[i]
        seen.append(cur.copy())
    return np.array(seen)


def _scores(res: _Result) -> Array:
    """Per configuration: J/unit when feasible; infeasible ones after all feasible, by shortfall."""
    return np.where(res.feasible, np.where(res.demoted, 1e9, 0.0), 1e18 * (1.0 + res.shortfall)) + (
        res.ratio
    )


def _score(res: _Result, i: int) -> float:
    return float(_scores(res)[i])


def _pick(res: _Result) -> int:
    return int(np.argmin(_scores(res)))


# ---------------------------------------------------------------------------------------------
# The continuous problem for a batch of configurations


@dataclass(slots=True)
class _Result:
    rate: Array  # (C, D)
    caps: Array  # (C, D)
    power: Array  # (C,)
    work: Array  # (C,)
    ratio: Array  # (C,)
    feasible: Mask  # (C,)
    shortfall: Array  # (C,) relative unmet SLO when infeasible
    demoted: Mask  # (C,) feasible, but ranked after every other feasible one (sole_shares_last)


class _Batch:
    """The continuous problem over a fleet's columns: its devices, then one virtual column per
    (shareable device, stream it may serve) for the time-shared parts (see the module docstring).
    """

    def __init__(
        self,
        facts: FleetFacts,
        m: TickModel,
        opts: list[tuple[int, ...]],
        *,
        sole_shares_last: bool = False,
    ) -> None:
        self.sole_shares_last = sole_shares_last
        self.phys = facts
        self.phys_model = m
        n_dev = facts.n_devices
        virt_dev: list[int] = []
        virt_stream: list[int] = []
        for d, o in enumerate(opts):
            if any(v <= _SHARE_BASE for v in o):
                for s in o:
                    if s >= 0:
                        virt_dev.append(d)
                        virt_stream.append(s)
        self.virt_dev = np.array(virt_dev, dtype=np.int64)
        self.virt_stream = np.array(virt_stream, dtype=np.int64)
        cols = np.concatenate([np.arange(n_dev), self.virt_dev])
        self.virtual = np.arange(len(cols)) >= n_dev
        member = facts.membership[:, cols].copy()
        member[:, n_dev:] = self.virt_stream[None, :] == np.arange(facts.n_streams)[:, None]
        if self.virtual.any():
            facts = facts.with_devices(cols, member)
            m = replace(
                m,
                rate_factor=m.rate_factor[cols],
                fixed_cap_w=m.fixed_cap_w[cols],
                down=m.down[cols],
                parked=m.parked[cols],
                awake=None if m.awake is None else m.awake[cols],
            )
        self.f = facts
        self.m = m
        self.dyn = facts.tdp_w - facts.idle_w
        self.pk = facts.peak_rate * m.rate_factor
        self.fixed = ~np.isnan(m.fixed_cap_w)
        self.cap_lo = np.where(self.fixed, m.fixed_cap_w, facts.min_cap_w)
        self.budget = None if facts.budget_w is None else facts.budget_w * (1.0 - 1e-9)

    def expand(self, assign: NDArray[np.int64]) -> tuple[NDArray[np.int64], Array, Array]:
        """Configurations over the columns: ``(codes, share cap (NaN: none), time fraction)``.
        A time-shared device's own column is SHARED, its two parts are on its virtual columns."""
        n_c, n_dev = assign.shape
        n_col = len(self.virtual)
        codes = np.full((n_c, n_col), VOID, dtype=np.int64)
        codes[:, :n_dev] = assign
        cap = np.full((n_c, n_col), np.nan)
        frac = np.ones((n_c, n_col))
        if not self.virtual.any():
            return codes, cap, frac
        levels = np.array(SHARE_CAP_LEVELS)
        splits = np.array(SHARE_SPLITS)
        pf, pm = self.phys, self.phys_model
        for d in np.unique(self.virt_dev):
            sh = assign[:, d] <= _SHARE_BASE
            if not sh.any():
                continue
            s, t, k, j = _share_decode(pf.n_streams, assign[sh, d])
            lo, hi = pf.min_cap_w[d], pf.tdp_w[d]
            c = pm.fixed_cap_w[d] if not np.isnan(pm.fixed_cap_w[d]) else lo + levels[k] * (hi - lo)
            rows = np.flatnonzero(sh)
            codes[rows, d] = SHARED
            cap[rows, d] = c
            for v in n_dev + np.flatnonzero(self.virt_dev == d):
                sv = self.virt_stream[v - n_dev]
                first, second = s == sv, t == sv
                use = first | second
                codes[rows[use], v] = sv
                cap[rows[use], v] = np.broadcast_to(c, rows.shape)[use]
                part = np.where(first, splits[j], 1.0 - splits[j]) * _SHARE_TIME
                frac[rows[use], v] = part[use]
        return codes, cap, frac

    def solve(self, assign: NDArray[np.int64]) -> _Result:
        f, m = self.f, self.m
        n_str = f.n_streams
        assign, share_cap, frac = self.expand(assign)
        on = assign >= 0
        sidx = np.where(on, assign, 0)
        u = m.util[sidx]
        b = np.minimum(m.beta[sidx], BETA_MAX)
        ud = u * self.dyn
        shared = ~np.isnan(share_cap)
        fixed = self.fixed | shared
        cap_lo = np.where(shared, share_cap, self.cap_lo)
        x_lo = np.clip((cap_lo - f.idle_w) / ud, 0.0, 1.0)
        r_lo = self.pk * frac * u * x_lo**b
        r_max = np.where(fixed, r_lo, self.pk * u) * on
        a = self.dyn * x_lo ** (1.0 - b) / self.pk
        member = (assign[:, None, :] == np.arange(n_str)[None, :, None]).astype(float)
        capacity = (member * r_max[:, None, :]).sum(axis=2)
        lower = m.slo_rate * (1.0 + SLO_MARGIN)
        upper = np.maximum(m.demand_rate, lower)
        short = np.maximum(lower[None, :] - capacity, 0.0)
        feasible = (short <= 1e-12 * np.maximum(lower, 1.0)).all(axis=1)
        shortfall = (short / np.maximum(lower, 1e-12)).sum(axis=1)
        # A time-shared stream with a working device of its own gives it the share the plan
        # does not serve (see _realize; a shared part would take the other stream's time). One
        # served by shared parts only (its one device is shared: generated-518) is planned at
        # its whole demand, so its weight on a part asks the device for exactly what the plan
        # gives it; a configuration whose parts cannot carry that demand counts as short.
        dedicated = (member * (on & ~self.virtual)[:, None, :]).any(axis=2)
        sole = (member * self.virtual[None, None, :]).any(axis=2) & ~dedicated
        unserved = sole & (capacity < m.demand_rate[None, :] * (1.0 - 1e-12))
        feasible &= ~unserved.any(axis=1)
        shortfall = shortfall + unserved.sum(axis=1)
        demoted = sole.any(axis=1) if self.sole_shares_last else np.zeros(len(assign), dtype=bool)
        lo_t = np.minimum(np.where(sole, upper[None, :], lower[None, :]), capacity)
        hi_t = np.minimum(upper[None, :], capacity)
        p = _Params(u, b, ud, x_lo, r_lo, r_max, a, on, self.pk, self.dyn, fixed, member)
        # Awake, down, waking and shared devices draw idle; virtual columns add no device.
        base_idle = np.where(
            self.virtual, 0.0, np.where(assign == PARK, f.standby_w, f.idle_w)
        ).sum(axis=1)
        # The fleet's caps: fixed ones, a shared device's once, min_cap_w where nothing works;
        # free caps follow the rates (_cap_sum).
        own_cap = np.where(on, np.where(fixed, cap_lo, 0.0), np.where(shared, cap_lo, f.min_cap_w))
        cap_floor = np.where(self.virtual, 0.0, own_cap).sum(axis=1)

        def evaluate(q: _Params, rows: NDArray[np.int64], r: Array) -> tuple[Array, Array]:
            return base_idle[rows] + _dyn_power(q, r).sum(axis=1), r.sum(axis=1)

        def inner(q: _Params, rows: NDArray[np.int64], lam: Array) -> Array:
            lo, hi = lo_t[rows], hi_t[rows]
            r = _water_fill(q, lam, np.zeros_like(lam), lo, hi)
            if self.budget is None:
                return r
            floor = cap_floor[rows]
            v = np.flatnonzero(_cap_sum(q, r, f.idle_w, floor) > self.budget)
            if not v.size:
                return r
            # The budget's multiplier, by bisection, for the configurations over it only.
            qv, lam_v, lo, hi, floor = q.take(v), lam[v], lo[v], hi[v], floor[v]
            nu_lo = np.full(v.shape, -14.0)
            nu_hi = np.full(v.shape, 10.0)
            for _ in range(_NU_BISECT):
                mid = 0.5 * (nu_lo + nu_hi)
                rr = _water_fill(qv, lam_v, np.exp(mid), lo, hi)
                over = _cap_sum(qv, rr, f.idle_w, floor) > self.budget
                nu_lo = np.where(over, mid, nu_lo)
                nu_hi = np.where(over, nu_hi, mid)
            r[v] = _water_fill(qv, lam_v, np.exp(nu_hi), lo, hi)
            return r

        every = np.arange(len(assign))
        r = inner(p, every, np.zeros(len(assign)))
        power, work = evaluate(p, every, r)
        lam = np.where(work > 0, power / np.maximum(work, 1e-300), 0.0)
        # Dinkelbach: a configuration whose step no longer improves is done (its next step, from
        # the same multiplier, would be the same), so each step solves the remaining ones only.
        active = every
        for _ in range(40):
            q = p.take(active)
            r_new = inner(q, active, lam[active])
            power, work = evaluate(q, active, r_new)
            obj = power - lam[active] * work
            improved = obj < -_DINKELBACH_TOL * np.maximum(power, 1.0)
            if not improved.any():
                break
            done = active[improved]
            r[done] = r_new[improved]
            lam[done] = np.where(work > 0, power / np.maximum(work, 1e-300), lam[active])[improved]
            active = done
        power, work = evaluate(p, every, r)
        caps = _caps(p, r, f.idle_w, cap_lo)
        if self.budget is not None:
            feasible &= _cap_sum(p, r, f.idle_w, cap_floor) <= self.budget * (1 + 1e-9)
        ratio = np.where(work > 0, power / np.maximum(work, 1e-300), np.inf)
        none_active = not (m.demand_rate > 0).any()
        if none_active:
            ratio = power  # nothing to serve: least power wins
        return _Result(r, caps, power, work, ratio, feasible, shortfall, demoted)


@dataclass(slots=True)
class _Params:
    u: Array
    b: Array
    ud: Array
    x_lo: Array
    r_lo: Array
    r_max: Array
    a: Array
    on: Mask
    pk: Array
    dyn: Array
    fixed: Mask
    member: Array  # (C, S, D) float

    def take(self, rows: NDArray[np.int64]) -> _Params:
        """The same parameters for configurations ``rows`` only (pk and dyn are per column)."""
        return _Params(
            self.u[rows],
            self.b[rows],
            self.ud[rows],
            self.x_lo[rows],
            self.r_lo[rows],
            self.r_max[rows],
            self.a[rows],
            self.on[rows],
            self.pk,
            self.dyn,
            self.fixed[rows],
            self.member[rows],
        )


def _rate_at_price(p: _Params, price: Array, nu: Array) -> Array:
    """Per device the rate minimizing ``f(r) + nu·cap(r) - price·r`` (left limit at ties)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        base = price * p.b * p.pk / ((1.0 + nu[:, None]) * p.dyn)
        curve = p.pk * p.u * base ** (p.b / (1.0 - p.b))
    curve = np.where(np.isfinite(curve), curve, p.r_max)
    free = np.clip(curve, p.r_lo, p.r_max)
    r = np.where(p.fixed, p.r_max, free)
    return np.where((price > p.a) & p.on, r, 0.0)


def _water_fill(p: _Params, lam: Array, nu: Array, lo_t: Array, hi_t: Array) -> Array:
    """Rates for multiplier ``lam`` (per config): each stream's total is its unconstrained
    optimum clipped into ``[lo_t, hi_t]``, reached by bisection on the stream's price."""
    member = p.member
    n_c, n_s, _ = member.shape
    price0 = lam[:, None, None] * np.ones((1, n_s, 1))
    r0 = _rate_at_price(p, np.einsum("csd->cd", price0 * member), nu)
    s0 = np.einsum("csd,cd->cs", member, r0)
    target = np.clip(s0, lo_t, hi_t)
    need = np.abs(target - s0) > 1e-12 * np.maximum(target, 1.0)
    if not need.any():
        return r0
    lo = np.full((n_c, n_s), math.log(float(p.a[p.on].min()) * 0.5) if p.on.any() else -30.0)
    hi = np.full((n_c, n_s), math.log(_max_marginal(p, nu) * 2.0 + 1e-30))
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        price = np.einsum("cs,csd->cd", np.exp(mid), member)
        s = np.einsum("csd,cd->cs", member, _rate_at_price(p, price, nu))
        below = s < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    r_lo = _rate_at_price(p, np.einsum("cs,csd->cd", np.exp(lo), member), nu)
    r_hi = _rate_at_price(p, np.einsum("cs,csd->cd", np.exp(hi), member), nu)
    s_lo = np.einsum("csd,cd->cs", member, r_lo)
    delta = np.maximum(target - s_lo, 0.0)
    inc = np.maximum(r_hi - r_lo, 0.0)
    inc_s = member * inc[:, None, :]
    cum = np.cumsum(inc_s, axis=2)
    fill = np.clip(delta[:, :, None] - (cum - inc_s), 0.0, inc_s).sum(axis=1)
    r = r_lo + fill
    keep = ~need
    keep_d = np.einsum("cs,csd->cd", keep.astype(float), member) > 0.5
    return np.where(keep_d, r0, r)


def _max_marginal(p: _Params, nu: Array) -> float:
    b = p.b
    m = (1.0 + nu.max()) * p.dyn / (b * p.pk)
    return float(max(m[p.on].max() if p.on.any() else 1.0, p.a[p.on].max() if p.on.any() else 1.0))


def _dyn_power(p: _Params, r: Array) -> Array:
    """``f(r)`` per device: linear to ``R_lo``, power law beyond (fixed caps: linear)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        law = p.ud * (r / (p.pk * p.u)) ** (1.0 / p.b)
    f = np.where((r <= p.r_lo) | p.fixed, p.a * r, law)
    return np.where(p.on, f, 0.0)


def _caps(p: _Params, r: Array, idle_w: Array, cap_lo: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.maximum(p.x_lo, (r / (p.pk * p.u)) ** (1.0 / p.b))
    free = idle_w + p.ud * np.minimum(x, 1.0)
    return np.where(p.fixed, cap_lo, np.maximum(free, cap_lo))


def _cap_sum(p: _Params, r: Array, idle_w: Array, cap_floor: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.maximum(p.x_lo, (r / (p.pk * p.u)) ** (1.0 / p.b))
    free = np.maximum(idle_w + p.ud * np.minimum(x, 1.0), idle_w + p.ud * p.x_lo)
    return np.where(p.on & ~p.fixed, free, 0.0).sum(axis=1) + cap_floor


# ---------------------------------------------------------------------------------------------
# From the optimum to controls


def _realize(
    batch: _Batch,
    assign: NDArray[np.int64],
    res: _Result,
    i: int,
    method: str,
    n_conf: int,
) -> Plan:
    """Controls for configuration ``assign`` (one row) from its optimum ``res[i]``: computed over
    the columns, then each virtual column folded into its device."""
    facts, m = batch.f, batch.m
    codes, share_cap, _ = batch.expand(assign)
    col = codes[0]
    rate = res.rate[i]
    caps = np.where(col >= 0, res.caps[i], facts.min_cap_w)
    caps = np.where(np.isnan(m.fixed_cap_w), caps, m.fixed_cap_w)
    caps = np.where(col == SHARED, share_cap[0], caps)
    caps = np.clip(caps + 1e-9 * facts.tdp_w, facts.min_cap_w, facts.tdp_w)
    weights = np.zeros((facts.n_streams, len(col)))
    for s in range(facts.n_streams):
        demand = float(m.demand_rate[s])
        mine = col == s
        if demand <= 0 or not mine.any():
            continue
        r_s = np.where(mine, rate, 0.0)
        tot = float(r_s.sum())
        if tot <= 0:
            continue
        if tot >= demand * (1.0 - 1e-12):
            weights[s] = r_s / tot
            continue
        w = r_s / demand
        excess = 1.0 - tot / demand
        sinks = np.flatnonzero(facts.membership[s] & ((col == PARK) | (col == DOWN)))
        if sinks.size:
            w[sinks[0]] += excess
        else:
            # A shared part is never saturated (its stream has less than the whole device).
            sat = _saturated(facts, m, s, caps, r_s) & mine
            own = mine & ~batch.virtual
            if sat.any():
                j = int(np.argmax(np.where(sat, r_s, -1.0)))
                w[j] += excess
            elif own.any():  # its own devices serve more; a shared part would take the other's time
                spread = np.where(own, r_s, 0.0) if r_s[own].sum() > 0 else own.astype(float)
                w = w + excess * spread / float(spread.sum())
            else:
                w = r_s / tot
        weights[s] = w
    n_dev = batch.phys.n_devices
    dev_rate = rate[:n_dev].copy()
    dev_weights = weights[:, :n_dev].copy()
    dev_assign = col[:n_dev].copy()
    part_rate = np.zeros(n_dev)
    for v in np.flatnonzero(batch.virtual):
        d = int(batch.virt_dev[v - n_dev])
        dev_rate[d] += rate[v]
        dev_weights[:, d] += weights[:, v]
        if col[v] >= 0 and rate[v] >= part_rate[d]:
            dev_assign[d], part_rate[d] = col[v], rate[v]
    return Plan(
        caps_w=caps[:n_dev],
        weights=dev_weights,
        standby=col[:n_dev] == PARK,
        rate=dev_rate,
        assign=dev_assign,
        shared=col[:n_dev] == SHARED,
        power_w=float(res.power[i]),
        work_rate=float(res.work[i]),
        method=method,
        configs=n_conf,
        feasible=bool(res.feasible[i]),
    )


def _saturated(facts: FleetFacts, m: TickModel, s: int, caps: Array, r: Array) -> Mask:
    """Devices whose full-load rate at ``caps`` does not exceed their planned rate: giving them
    more share changes nothing, so they can absorb a share the plan does not serve."""
    u, b = m.util[s], min(m.beta[s], BETA_MAX)
    dyn = facts.tdp_w - facts.idle_w
    eff_cap = np.where(np.isnan(m.fixed_cap_w), caps, m.fixed_cap_w)
    p_dem = facts.idle_w + u * dyn
    x = (np.minimum(p_dem, eff_cap) - facts.idle_w) / (u * dyn)
    full = facts.peak_rate * m.rate_factor * u * np.maximum(x, 0.0) ** b
    return (full <= r * (1.0 + 1e-7)) & (r > 0)
