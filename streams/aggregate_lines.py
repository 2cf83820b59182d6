"""InfluxDB line protocol for ``telemetry.aggregates`` payloads.

Measurements ``device_agg``, ``host_agg`` and ``fleet_agg`` (by scope). Tags: ``host`` (device and
host scopes), ``device`` (device scope), ``window`` (the window length, e.g. ``60s``, so several
window sizes can share a database). Fields: ``<metric>_<stat>`` for ``min``, ``max``, ``mean``,
``p95``, ``last`` (floats) and ``<metric>_count`` (integer), plus ``sample_count`` and
``gap_count`` (integers) and ``energy_j`` (float, absent when ``null``). Time = the window start,
so writing a window again (a replay, a fleet window written by a restarted worker) overwrites the
same point instead of adding one.
"""

from __future__ import annotations

from collections.abc import Iterable

from accelpilot.schemas.aggregates import Aggregate
from accelpilot.streams.influx_lines import escape_tag

MEASUREMENTS = {"device": "device_agg", "host": "host_agg", "fleet": "fleet_agg"}


def window_tag(window_s: float) -> str:
    """``60.0`` -> ``60s``, ``0.5`` -> ``0.5s``.

    >>> window_tag(60.0), window_tag(0.5)
    ('60s', '0.5s')
    """
    return f"{int(window_s)}s" if float(window_s).is_integer() else f"{window_s!r}s"


def aggregate_line(agg: Aggregate) -> str:
    """One point per aggregate; metric fields in the payload's order."""
    tags = MEASUREMENTS[agg.scope]
    if agg.scope != "fleet":
        host = agg.key if agg.scope == "host" else agg.host_id
        if not host:
            raise ValueError(f"a device aggregate needs host_id (device {agg.key!r})")
        tags += f",host={escape_tag(host)}"
    if agg.scope == "device":
        tags += f",device={escape_tag(agg.key)}"
    fields = [f"sample_count={agg.sample_count}i", f"gap_count={agg.gap_count}i"]
    if agg.energy_j is not None:
        fields.append(f"energy_j={float(agg.energy_j)!r}")
    for name, s in agg.metrics.items():
        fields.append(
            f"{name}_min={float(s.min)!r},{name}_max={float(s.max)!r},"
            f"{name}_mean={float(s.mean)!r},{name}_p95={float(s.p95)!r},"
            f"{name}_last={float(s.last)!r},{name}_count={s.count}i"
        )
    return f"{tags},window={window_tag(agg.window_s)} {','.join(fields)} {agg.window_start_ns}"


def aggregate_lines(aggs: Iterable[Aggregate]) -> list[str]:
    return [aggregate_line(agg) for agg in aggs]
