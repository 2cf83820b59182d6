"""The operator's slider requests checked against the fleet's facts: one rule set for the demo
(:class:`~accelpilot.demo.Demo`) and the real-pipeline console
(:class:`~accelpilot.console.steering.PipelineSteering`).

Each function raises a :class:`~accelpilot.console.errors.ConsoleRequestError` (4xx with the
reason) before anything is signed, so a refused request changes and publishes nothing. What
passes becomes :class:`~accelpilot.optimizer.simulator.Controls` for the optimizer's own
conversion (``optimizer/actions.py`` ``controls_to_intents``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from accelpilot.console.errors import InvalidRequestError, NotFoundError
from accelpilot.optimizer.facts import FleetFacts

Array = NDArray[np.float64]


def stream_index(facts: FleetFacts, stream_id: str | None) -> int:
    if stream_id not in facts.stream_ids:
        raise NotFoundError(f"unknown stream {stream_id!r}; streams: {list(facts.stream_ids)}")
    return int(facts.stream_ids.index(stream_id))


def requested_caps(
    facts: FleetFacts,
    caps_w: Array,
    idx: list[int],
    *,
    cap_w: float | None,
    fraction_of_tdp: float | None,
) -> tuple[Array, str]:
    """``caps_w`` with the devices ``idx`` set to ``cap_w`` (which must lie in each one's
    ``[min_cap_w, tdp_w]``) or to ``fraction_of_tdp`` of each one's ``tdp_w``, clamped into its
    limits (the group slider); and the request in words."""
    if (cap_w is None) == (fraction_of_tdp is None):
        raise InvalidRequestError("give exactly one of cap_w and fraction_of_tdp")
    caps = np.array(caps_w, dtype=float)
    bad = []
    for i in idx:
        want = cap_w if cap_w is not None else float(facts.tdp_w[i]) * (fraction_of_tdp or 0.0)
        lo, hi = float(facts.min_cap_w[i]), float(facts.tdp_w[i])
        if fraction_of_tdp is not None:
            want = min(max(want, lo), hi)  # a group slider clamps into each device
        if not lo <= want <= hi:
            bad.append(f"{facts.device_ids[i]}: {want:g} W not in [{lo:g}, {hi:g}] W")
        caps[i] = want
    if bad:
        raise InvalidRequestError("cap out of the device's limits: " + "; ".join(bad))
    what = f"{cap_w:g} W" if cap_w is not None else f"{fraction_of_tdp:.0%} of TDP"
    return caps, what


def requested_weights(
    facts: FleetFacts, weights: Array, stream_id: str, shares: dict[str, float]
) -> tuple[Array, int]:
    """``weights`` with stream ``stream_id``'s row set to ``shares`` (its devices not named get
    0); the stream's index."""
    s = stream_index(facts, stream_id)
    members = {facts.device_ids[int(i)]: int(i) for i in np.flatnonzero(facts.membership[s])}
    strangers = sorted(set(shares) - set(members))
    if strangers:
        raise InvalidRequestError(
            f"device(s) {strangers} do not serve stream {stream_id!r}; "
            f"its devices: {sorted(members)}"
        )
    if not any(w > 0 for w in shares.values()):
        raise InvalidRequestError(f"every weight is 0: stream {stream_id!r} would be left unserved")
    w = np.array(weights, dtype=float)
    w[s] = 0.0
    for d, x in shares.items():
        w[s, members[d]] = x
    return w, s


def resolve_devices(
    facts: FleetFacts,
    hosts: Mapping[str, Sequence[int]],
    device_ids: list[str] | None = None,
    host_id: str | None = None,
    stream_id: str | None = None,
) -> list[int]:
    """Device indices of exactly one target: a list of devices, a host (``hosts``: host id ->
    its device indices) or a stream."""
    given = [x is not None for x in (device_ids, host_id, stream_id)]
    if sum(given) != 1:
        raise InvalidRequestError("name exactly one target: device_ids, host_id or stream_id")
    ids = facts.device_ids
    if device_ids is not None:
        if not device_ids:
            raise InvalidRequestError("device_ids is empty")
        unknown = [d for d in device_ids if d not in ids]
        if unknown:
            raise NotFoundError(f"unknown device(s) {unknown}; see /api/inventory")
        return sorted({ids.index(d) for d in device_ids})
    if host_id is not None:
        if host_id not in hosts:
            raise NotFoundError(f"unknown host {host_id!r}; hosts: {sorted(hosts)}")
        return list(hosts[host_id])
    s = stream_index(facts, stream_id)
    return [int(i) for i in np.flatnonzero(facts.membership[s])]
