"""The power-performance model of shared/spec/fleet-scenarios.md as pure, vectorized functions.

Every function takes numpy arrays (or scalars) that broadcast against each other, typically one
value per device, or a ``(streams, devices)`` matrix, and returns new arrays; nothing is mutated.
Each docstring quotes the spec line it implements. The simulator, the baselines and the oracle all
call these, so there is exactly one implementation of the physics.

>>> float(demand_power_w(70.0, 700.0, 0.95))
668.5
>>> float(drawn_power_w(668.5, 400.0, True, 70.0))
400.0
>>> round(float(full_load_rate(1000.0, 0.95, 0.33, 400.0, 668.5, 70.0)), 3)
780.552
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

# Relative tolerance of the SLO comparison, so that an exact-boundary solution (the oracle at
# 1e-6) is not called a violation because of floating-point rounding.
SLO_RTOL = 1e-9
_TINY = float(np.finfo(float).tiny)


def demand_power_w(idle_w: ArrayLike, tdp_w: ArrayLike, util: ArrayLike) -> Array:
    """Uncapped demand power.

    Spec: "Dynamic range ``D = tdp_w - idle_w``; uncapped demand power
    ``P_dem = idle_w + util · D``."
    """
    idle = np.asarray(idle_w, dtype=float)
    return idle + np.asarray(util, dtype=float) * (np.asarray(tdp_w, dtype=float) - idle)


def drawn_power_w(
    p_dem_w: ArrayLike, cap_w: ArrayLike, has_work: ArrayLike, idle_w: ArrayLike
) -> Array:
    """Drawn power under a cap, at full load.

    Spec: "With cap ``c`` (min_cap_w ≤ c ≤ tdp_w): drawn power ``P = min(P_dem, c)`` while the
    device has work, ``idle_w`` when it has none."
    """
    return np.where(
        np.asarray(has_work, dtype=bool),
        np.minimum(np.asarray(p_dem_w, dtype=float), np.asarray(cap_w, dtype=float)),
        np.asarray(idle_w, dtype=float),
    )


def full_load_rate(
    peak_rate: ArrayLike,
    util: ArrayLike,
    beta: ArrayLike,
    p_w: ArrayLike,
    p_dem_w: ArrayLike,
    idle_w: ArrayLike,
) -> Array:
    """Work rate at full load under a cap (``P`` is the capped power from :func:`drawn_power_w`).

    Spec: "Rate at full load:
    ``R(c) = peak_rate · util · ((P - idle_w) / (P_dem - idle_w)) ^ beta``."
    """
    idle = np.asarray(idle_w, dtype=float)
    ratio = (np.asarray(p_w, dtype=float) - idle) / (np.asarray(p_dem_w, dtype=float) - idle)
    return (
        np.asarray(peak_rate, dtype=float)
        * np.asarray(util, dtype=float)
        * ratio ** np.asarray(beta, dtype=float)
    )


def capped_rate(
    peak_rate: ArrayLike,
    idle_w: ArrayLike,
    tdp_w: ArrayLike,
    util: ArrayLike,
    beta: ArrayLike,
    cap_w: ArrayLike,
) -> tuple[Array, Array]:
    """``(P, R(c))`` for a device at full load under cap ``c``: the two lines above composed."""
    p_dem = demand_power_w(idle_w, tdp_w, util)
    p = np.minimum(p_dem, np.asarray(cap_w, dtype=float))
    return p, full_load_rate(peak_rate, util, beta, p, p_dem, idle_w)


def served_rate(share: ArrayLike, demand_rate: ArrayLike, rate: ArrayLike) -> Array:
    """Work a device does for one stream.

    Spec: "A device given a share ``w`` of a stream's demand does ``min(w · demand_rate, R(c))``
    work units per second."
    """
    return np.minimum(
        np.asarray(share, dtype=float) * np.asarray(demand_rate, dtype=float),
        np.asarray(rate, dtype=float),
    )


def partial_power_w(idle_w: ArrayLike, p_w: ArrayLike, served: ArrayLike, rate: ArrayLike) -> Array:
    """Power of a device that is not fully loaded.

    Spec: "when its share is below ``R(c)`` it draws power in proportion:
    ``idle_w + (P - idle_w) · served / R(c)``."
    """
    idle = np.asarray(idle_w, dtype=float)
    return idle + (np.asarray(p_w, dtype=float) - idle) * (
        np.asarray(served, dtype=float) / np.asarray(rate, dtype=float)
    )


def time_share(
    assigned_rate: ArrayLike, rate: ArrayLike, available: ArrayLike
) -> tuple[Array, Array]:
    """How a device divides its time between the streams assigned to it.

    The spec's single-stream rule (serve ``min(w · demand, R)``, power
    ``idle + (P - idle) · served / R``) is a device busy for the fraction ``served / R`` of the
    tick. With several streams on one device the fractions add: stream ``s`` needs
    ``load[s] = assigned[s] / R_s`` of the device's time. If the loads sum to more than the
    ``available`` fraction of the tick (1, less while waking, 0 in standby or off the bus), every
    stream is served the same fraction of its assigned demand ("served in proportion to assigned
    demand"). With one stream and ``available = 1`` this is exactly the spec.

    ``assigned_rate`` and ``rate`` (> 0) are ``(streams, devices)``; ``available`` is
    ``(devices,)`` in [0, 1].
    Returns ``(busy, served)``: ``busy[s, d]`` the fraction of the tick device ``d`` works for
    stream ``s`` and ``served[s, d]`` the work rate it delivers to it.
    """
    assigned = np.asarray(assigned_rate, dtype=float)
    avail = np.asarray(available, dtype=float)
    load = assigned / np.asarray(rate, dtype=float)  # rate > 0: min_cap_w > idle_w, util > 0
    total = load.sum(axis=0)
    # = min(1, avail / total), and 0 where nothing is available; exactly 1 when all fits.
    scale = avail / np.maximum(np.maximum(total, avail), _TINY)
    return load * scale, assigned * scale


def shared_power_w(idle_w: ArrayLike, p_w: ArrayLike, busy: ArrayLike) -> Array:
    """Power of a device time-shared between streams: ``idle + Σ_s busy[s] · (P_s - idle)``.

    With one stream, ``busy = served / R(c)`` and this is the spec's partial-share line
    "``idle_w + (P - idle_w) · served / R(c)``"; with no work it is "``idle_w`` when it has none".
    """
    idle = np.asarray(idle_w, dtype=float)
    return idle + (np.asarray(busy, dtype=float) * (np.asarray(p_w, dtype=float) - idle)).sum(
        axis=0
    )


def energy_j(power_w: ArrayLike, tick_s: float) -> Array:
    """Spec: "Energy is power x tick; work is summed per stream."."""
    return np.asarray(power_w, dtype=float) * tick_s


def slo_threshold_rate(
    demand_rate: ArrayLike, uncapped_rate: ArrayLike, max_slowdown: float
) -> Array:
    """The least a stream must be served in a tick.

    Spec: "a stream is in violation in a tick when it is served less than
    ``demand_rate / max_slowdown``, or, if its demand exceeds what its devices could deliver
    uncapped, less than that uncapped capacity divided by ``max_slowdown``." Both branches are
    ``min(demand_rate, uncapped) / max_slowdown``.
    """
    return (
        np.minimum(np.asarray(demand_rate, dtype=float), np.asarray(uncapped_rate, dtype=float))
        / max_slowdown
    )


def slo_violated(served_rate_: ArrayLike, threshold_rate: ArrayLike) -> NDArray[np.bool_]:
    """True where a stream is served less than its threshold (relative tolerance ``SLO_RTOL``)."""
    thr = np.asarray(threshold_rate, dtype=float)
    return np.asarray(served_rate_, dtype=float) < thr * (1.0 - SLO_RTOL)


def clip_caps_to_budget(cap_w: ArrayLike, min_cap_w: ArrayLike, budget_w: float | None) -> Array:
    """Spec: "``fleet_power_budget_w``, when set, bounds the sum of all caps."

    Caps whose sum exceeds the budget are lowered together: every device keeps its ``min_cap_w``
    and the headroom above it is scaled by one factor, so the sum equals the budget. Caps that
    already fit are returned unchanged. (The scenario loader guarantees
    ``budget >= sum(min_cap_w)``.)

    >>> clip_caps_to_budget([700.0, 700.0], [200.0, 200.0], 1000.0).tolist()
    [500.0, 500.0]
    """
    cap = np.asarray(cap_w, dtype=float)
    if budget_w is None:
        return cap
    total = float(cap.sum())
    if total <= budget_w:
        return cap
    floor = np.asarray(min_cap_w, dtype=float)
    head = cap - floor
    return floor + head * ((budget_w - float(floor.sum())) / float(head.sum()))
