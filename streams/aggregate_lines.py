"""InfluxDB line protocol for ``telemetry.aggregates`` payloads.

Measurements ``device_agg``, ``host_agg`` and ``fleet_agg`` (by scope). Tags: ``cluster`` (the
worker's ``worker.cluster``; a fleet window is that cluster's fleet), ``host`` (device and host
scopes), ``device`` (device scope), ``window`` (the window length, e.g. ``60s``, so several
window sizes can share a database). Fields: ``<metric>_<stat>`` for ``min``, ``max``, ``mean``,
``p95``, ``last`` (floats) and ``<metric>_count`` (integer) **only where it differs from**
``sample_count`` (a metric some samples of the window did not carry; absent means "every
sample": :func:`metric_count` reads it back), plus ``sample_count`` and ``gap_count``
(integers) and ``energy_j`` (float, absent when ``null``). Time = the window start, so writing
a window again (a replay, a fleet window written by a restarted worker) overwrites the same
point instead of adding one.

Why the counts are sparse: InfluxDB's write cost goes with the number of field series (each
field of each device is its own series), and a per-metric count equal to ``sample_count`` in
almost every window was 16 % of the aggregate fields and about a quarter of their write CPU
(docs/streams.md, Round 5 and Round 7).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import msgspec

from accelpilot.schemas.aggregates import Aggregate
from accelpilot.streams.influx_lines import escape_tag

MEASUREMENTS = {"device": "device_agg", "host": "host_agg", "fleet": "fleet_agg"}


def window_tag(window_s: float) -> str:
    """``60.0`` -> ``60s``, ``0.5`` -> ``0.5s``.

    >>> window_tag(60.0), window_tag(0.5)
    ('60s', '0.5s')
    """
    return f"{int(window_s)}s" if float(window_s).is_integer() else f"{window_s!r}s"


class AggregateFormatter:
    """:func:`aggregate_line` with the text around the numbers cached per layout (scope, tags,
    window, whether energy is present, metric names): the numbers of an aggregate are then
    formatted by msgspec's JSON encoder in one C call (shortest round-trip text, as in
    :mod:`~accelpilot.streams.influx_lines`) and dropped into the cached ``%s`` template."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._cluster_tag = f",cluster={escape_tag(cluster)}"
        self._templates: dict[tuple[object, ...], str] = {}

    def line(self, agg: Aggregate) -> str:
        metrics = agg.metrics
        has_energy = agg.energy_j is not None
        n = agg.sample_count
        partial = tuple(name for name, s in metrics.items() if s.count != n)
        key = (agg.scope, agg.key, agg.host_id, agg.window_s, has_energy, partial, *metrics)
        template = self._templates.get(key)
        if template is None:
            template = self._template(agg, partial)
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            self._templates[key] = template
        numbers: list[float | int] = [n, agg.gap_count]
        if has_energy:
            numbers.append(float(agg.energy_j))  # type: ignore[arg-type]
        for s in metrics.values():
            numbers += (float(s.min), float(s.max), float(s.mean), float(s.p95), float(s.last))
            if s.count != n:
                numbers.append(s.count)
        numbers.append(agg.window_start_ns)
        return template % tuple(_encode(numbers)[1:-1].decode().split(","))

    def _template(self, agg: Aggregate, partial: tuple[str, ...]) -> str:
        tags = MEASUREMENTS[agg.scope] + self._cluster_tag
        if agg.scope != "fleet":
            host = agg.key if agg.scope == "host" else agg.host_id
            if not host:
                raise ValueError(f"a device aggregate needs host_id (device {agg.key!r})")
            tags += f",host={escape_tag(host)}"
        if agg.scope == "device":
            tags += f",device={escape_tag(agg.key)}"
        fields = ["sample_count=%si", "gap_count=%si"]
        if agg.energy_j is not None:
            fields.append("energy_j=%s")
        for name in agg.metrics:
            fields.append(
                f"{name}_min=%s,{name}_max=%s,{name}_mean=%s,{name}_p95=%s,{name}_last=%s"
                + (f",{name}_count=%si" if name in partial else "")
            )
        series = f"{tags},window={window_tag(agg.window_s)}".replace("%", "%%")
        return f"{series} {','.join(fields)} %s"


def metric_count(fields: Mapping[str, Any], metric: str) -> int:
    """How many samples of an aggregate point's window carried ``metric``: its ``_count`` field
    where written, else ``sample_count`` (the module docstring).

    >>> metric_count({"sample_count": 10, "power_w_count": 7}, "power_w")
    7
    >>> metric_count({"sample_count": 10, "power_w_count": None}, "power_w")
    10
    """
    count = fields.get(f"{metric}_count")
    return int(fields["sample_count"] if count is None else count)


_MAX_TEMPLATES = 200_000  # layouts cached (two windows x devices and hosts of a partition set)
_encode = msgspec.json.Encoder().encode


@lru_cache(maxsize=16)
def _formatter(cluster: str) -> AggregateFormatter:
    return AggregateFormatter(cluster)


def aggregate_line(agg: Aggregate, *, cluster: str) -> str:
    """One point per aggregate, tagged ``cluster=<cluster>``; metric fields in the payload's
    order."""
    return _formatter(cluster).line(agg)


def aggregate_lines(aggs: Iterable[Aggregate], *, cluster: str) -> list[str]:
    line = _formatter(cluster).line
    return [line(agg) for agg in aggs]
