"""Event-time tumbling windows over ``telemetry.samples``: the ``telemetry.aggregates`` producer.

Pure code (no Kafka, no Faust): feed :class:`HostSample` objects to
:meth:`WindowAggregator.add`, get back the :class:`Aggregate` payloads of the windows that closed.

Windows
    Tumbling, aligned to multiples of ``window_s`` since the epoch; a sample at ``ts_ns`` belongs
    to ``[k * window, (k + 1) * window)``. Each host has its own watermark = the largest ``ts_ns``
    it has sent minus ``allowed_lateness_s``; a host's window closes when its watermark reaches the
    window's end. A sample whose window has already closed for its host is *late*: dropped and
    counted (:attr:`WindowAggregator.late_dropped_total`). A sample with the ``(host, ts_ns)`` of
    one already accepted is a replay: ignored and counted (``duplicates_total``), so at-least-once
    input gives the aggregates of exactly-once input. :meth:`WindowAggregator.flush_all` closes
    everything (shutdown). A window without samples emits nothing.

Device statistics (per device, window and metric; ``null`` values skipped)
    ``min``, ``max``, ``mean``, ``last`` (by ``ts_ns``), ``count`` and ``p95``, exact over the
    window's values with linear interpolation between closest ranks (numpy's default
    "linear" method): fine for the <= 600 values of a device-window. A metric with no value in
    the window is absent. ``sample_count`` = samples that listed the device.

Gaps (``gap_count``)
    Between two consecutive samples of a device (a host for host scope), ``t0`` and ``t1``, the
    missing ticks are ``round((t1 - t0) / interval) - 1`` with the ``interval_s`` of the earlier
    sample, placed at ``t0 + k * interval``; each window counts those inside it (a gap that
    crosses a window edge is split). The first sample ever seen of a device has no predecessor,
    and after the last one nothing is counted.

Energy (``energy_j``)
    Trapezoid over ``power_w`` between consecutive samples of a device that carry it, the
    straight line between them clipped to the window (a segment crossing an edge is split by
    linear interpolation). A segment longer than 2 x the earlier sample's ``interval_s`` is a gap:
    it adds no energy (nothing is invented; a single missed tick is still bridged). ``null``
    for a device with no ``power_w`` in or across the window. The segment that leaves a window is
    integrated when the window closes, with the next sample known then; a sample that arrives
    later (within lateness) in front of it is integrated correctly from the next window's side
    only. This is the one place where arrival order can change a result.

Host roll-up (scope ``host``) and fleet roll-up (scope ``fleet``), by the metric's unit

    ========================  =====================================  ===========================
    unit (metrics)            host: per sample, across its devices   fleet: across host windows
    ========================  =====================================  ===========================
    W, J, B, count, units/s   sum of the devices' values             every statistic summed
    (power, cap, energy,                                             (min/max/p95 of the sum of
    memory, counters, work)                                          hosts: an upper bound of
                                                                     the true peak; mean exact)
    degC, %, MHz              mean of the devices' values            min of mins, max of maxes,
    (temperatures, util,                                             count-weighted mean of
    fan, clocks)                                                     means and p95s, mean of lasts
    1 (pstate)                max (the slowest state)                min of mins, max of maxes,
                                                                     weighted mean, max p95/last
    bitmask (throttle mask)   bitwise OR                             as pstate, ``last`` OR-ed
    ========================  =====================================  ===========================

    The host's statistics are then taken over that per-sample series; ``sample_count`` and
    ``gap_count`` are the host's, ``energy_j`` the sum of its devices'. The fleet sums
    ``sample_count``, ``gap_count`` and ``energy_j`` of the hosts that reported in the window.
    Hosts are not sampled in lockstep, hence the host-window combination for the fleet.

Fleet windows
    A fleet window is emitted once every *live* host (one whose newest ``ts_ns`` is within
    ``host_idle_s``, default ``window_s + allowed_lateness_s``, of the newest in the fleet) has a
    watermark past its end, i.e. has closed it; a silent host is not waited for. A host window
    that closes after its fleet window was emitted (a host replaying a disk buffer) is still
    emitted as device/host aggregates and counted in ``fleet_missed_host_windows_total``. The
    fleet is the hosts this aggregator sees: one aggregator per fleet, or a downstream stage,
    not one per partition.

Output order is deterministic: per closed host window (ascending), its devices by id, then the
host; then fleet windows (ascending). Column order inside a window is canonical (sorted ids and
metric names), so reordering samples within the lateness gives identical statistics (energy:
see above).

State is columnar: one ``(metrics, devices)`` float64 row per accepted sample per open window
(8 B x metrics x devices per sample), stacked when the window closes. ``get_state`` /
``from_state`` checkpoint all of it with msgspec (msgpack); checkpoint before committing the
consumer offsets, so that whatever is read again after a restart is a replay.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import operator
import zlib
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from accelpilot.schemas.aggregates import Aggregate, MetricStats
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample

Reduction = Literal["sum", "mean", "max", "or"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: How a host combines its devices' values of one instant, by metric unit (module docstring).
HOST_REDUCTION_BY_UNIT: dict[str, Reduction] = {
    "W": "sum",
    "J": "sum",
    "B": "sum",
    "count": "sum",
    "units/s": "sum",
    "degC": "mean",
    "%": "mean",
    "MHz": "mean",
    "1": "max",
    "bitmask": "or",
}

POWER_METRIC = "power_w"
_NS_PER_S = 1_000_000_000
_NEVER = -(2**63)
_STATE_VERSION = 1


def host_reduction(metric: str) -> Reduction:
    """The roll-up rule of ``metric`` (``mean`` for a name outside the metrics table)."""
    spec = METRICS.get(metric)
    return HOST_REDUCTION_BY_UNIT.get(spec.unit, "mean") if spec else "mean"


def sample_values(sample: HostSample) -> FloatArray:
    """The sample's metrics as a ``(metrics, devices)`` float64 array, NaN where ``null``."""
    return np.array(list(sample.metrics.values()), dtype=np.float64).reshape(
        len(sample.metrics), len(sample.device_ids)
    )


# -- per-window columnar buffer ---------------------------------------------------------------
class _Layout:
    """Where one sample's ``(metrics, devices)`` row lands in its window's union columns."""

    __slots__ = ("devs", "di", "keys", "mi", "power_row")

    def __init__(self, keys: list[str], devs: list[str], mi: IntArray, di: IntArray) -> None:
        self.keys, self.devs, self.mi, self.di = keys, devs, mi, di
        self.power_row = keys.index(POWER_METRIC) if POWER_METRIC in keys else None


class _Window:
    """The accepted samples of one host in one window, one float64 row per sample."""

    __slots__ = (
        "device_ids",
        "device_pos",
        "index",
        "interval_ns",
        "layout_of_row",
        "layouts",
        "metric_names",
        "metric_pos",
        "rows",
        "seen",
        "ts_ns",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.ts_ns: list[int] = []
        self.interval_ns: list[int] = []
        self.rows: list[FloatArray] = []
        self.layout_of_row: list[int] = []
        self.layouts: list[_Layout] = []
        self.metric_names: list[str] = []
        self.metric_pos: dict[str, int] = {}
        self.device_ids: list[str] = []
        self.device_pos: dict[str, int] = {}
        self.seen: set[int] = set()

    def append(
        self, ts_ns: int, interval_ns: int, keys: list[str], devs: list[str], row: FloatArray
    ) -> None:
        layouts = self.layouts
        if not layouts or keys != layouts[-1].keys or devs != layouts[-1].devs:
            layouts.append(
                _Layout(
                    keys,
                    devs,
                    self._positions(keys, self.metric_names, self.metric_pos),
                    self._positions(devs, self.device_ids, self.device_pos),
                )
            )
        self.ts_ns.append(ts_ns)
        self.interval_ns.append(interval_ns)
        self.rows.append(row)
        self.layout_of_row.append(len(layouts) - 1)
        self.seen.add(ts_ns)

    @staticmethod
    def _positions(names: list[str], union: list[str], pos: dict[str, int]) -> IntArray:
        for name in names:
            if name not in pos:
                pos[name] = len(union)
                union.append(name)
        return np.array([pos[name] for name in names], dtype=np.int64)

    def materialize(self) -> tuple[FloatArray, BoolArray]:
        """``values (n, metrics, devices)`` with NaN for absent, ``present (n, devices)``; in
        arrival order and union column order."""
        n, m, d = len(self.rows), len(self.metric_names), len(self.device_ids)
        if len(self.layouts) == 1:
            return np.stack(self.rows).reshape(n, m, d), np.ones((n, d), dtype=np.bool_)
        values = np.full((n, m, d), np.nan)
        present = np.zeros((n, d), dtype=np.bool_)
        for i, (row, li) in enumerate(zip(self.rows, self.layout_of_row, strict=True)):
            lay = self.layouts[li]
            values[i][np.ix_(lay.mi, lay.di)] = row
            present[i, lay.di] = True
        return values, present


class _Host:
    __slots__ = (
        "checked_max_ts_ns",
        "closed_until_ns",
        "device_last",
        "host_id",
        "index",
        "last",
        "max_ts_ns",
        "power_last",
        "progress_ns",
        "windows",
    )

    def __init__(self, host_id: str, index: int) -> None:
        self.host_id = host_id
        self.index = index
        self.max_ts_ns = _NEVER
        # close_idle_hosts with a clock: max_ts_ns at its last call, and when it last grew.
        self.checked_max_ts_ns = _NEVER
        self.progress_ns = 0
        self.closed_until_ns = _NEVER  # windows ending at or before this are closed
        self.windows: dict[int, _Window] = {}
        # The last sample of the closed windows: the left end of the next window's first segment.
        self.last: tuple[int, int] | None = None  # (ts_ns, interval_ns)
        self.device_last: dict[str, tuple[int, int]] = {}
        self.power_last: dict[str, tuple[int, int, float]] = {}  # (ts_ns, interval_ns, power_w)


# -- checkpoint format ------------------------------------------------------------------------
class _WindowState(msgspec.Struct, frozen=True):
    index: int
    ts_ns: list[int]
    interval_ns: list[int]
    metric_names: list[str]
    device_ids: list[str]
    values: bytes  # float64 (n, metrics, devices), arrival order, NaN = absent
    present: bytes  # bool (n, devices)


class _HostState(msgspec.Struct, frozen=True):
    host_id: str
    max_ts_ns: int
    closed_until_ns: int
    last: tuple[int, int] | None
    device_last: dict[str, tuple[int, int]]
    power_last: dict[str, tuple[int, int, float]]
    windows: list[_WindowState]


class _AggregatorState(msgspec.Struct, frozen=True):
    v: int
    window_s: float
    allowed_lateness_s: float
    host_idle_s: float
    hosts: list[_HostState]
    fleet_pending: dict[int, dict[str, Aggregate]]
    fleet_done_until_ns: int
    late_dropped_total: int
    duplicates_total: int
    fleet_missed_host_windows_total: int


# -- statistics -------------------------------------------------------------------------------
def column_stats(x: FloatArray) -> tuple[FloatArray, ...]:
    """``min, max, mean, p95, last, count`` of each column of ``x (n, k)``, NaN skipped.

    Rows must be in time order and there must be at least one. A column with no value gives
    NaN statistics and count 0.

    >>> [s.tolist() for s in column_stats(np.array([[1.0], [np.nan], [3.0], [2.0]]))]
    [[1.0], [3.0], [2.0], [2.9], [2.0], [3.0]]
    """
    n, k = x.shape
    cols = np.arange(k)
    valid = ~np.isnan(x)
    count = valid.sum(axis=0)
    srt = np.sort(x, axis=0)  # NaN sorts last
    top = np.maximum(count - 1, 0)
    mean = np.where(valid, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    num = 95 * top  # the p95 rank 0.95 * (count - 1), in integers so that it is exact
    lo, frac = num // 100, (num % 100) / 100.0
    s_lo, s_hi = srt[lo, cols], srt[np.minimum(lo + 1, top), cols]
    p95 = np.where(frac == 0.0, s_lo, s_lo + (s_hi - s_lo) * frac)
    last = x[n - 1 - np.argmax(valid[::-1], axis=0), cols]
    mn, mx = srt[0], srt[top, cols]
    return mn, mx, mean, p95, last, count.astype(np.float64)


def _stats_dicts(
    names: list[str], stats: tuple[FloatArray, ...], groups: int
) -> list[dict[str, MetricStats]]:
    """One ``{metric: MetricStats}`` per group, metrics sorted by name; ``stats`` are
    ``(len(names), groups)`` arrays."""
    mn, mx, mean, p95, last, count = (s.reshape(len(names), groups).tolist() for s in stats)
    out: list[dict[str, MetricStats]] = [{} for _ in range(groups)]
    for m in sorted(range(len(names)), key=names.__getitem__):
        name = names[m]
        c_m = count[m]
        for g in range(groups):
            if c_m[g]:
                out[g][name] = MetricStats(
                    min=mn[m][g],
                    max=mx[m][g],
                    mean=mean[m][g],
                    p95=p95[m][g],
                    last=last[m][g],
                    count=int(c_m[g]),
                )
    return out


def _host_series(values: FloatArray, names: list[str]) -> FloatArray:
    """``(n, metrics)``: each instant's devices combined by :func:`host_reduction`."""
    rules = [host_reduction(name) for name in names]
    valid = ~np.isnan(values)
    count = valid.sum(axis=2)
    zeroed = np.where(valid, values, 0.0)
    total = zeroed.sum(axis=2)
    out: FloatArray = total / np.maximum(count, 1)  # "mean"; NaN where none reported, below
    for rule in ("sum", "max", "or"):
        idx = [m for m, r in enumerate(rules) if r == rule]
        if not idx:
            continue
        if rule == "sum":
            out[:, idx] = total[:, idx]
        elif rule == "max":
            out[:, idx] = np.fmax.reduce(values[:, idx], axis=2)
        else:
            masks = zeroed[:, idx].astype(np.uint64)
            out[:, idx] = np.bitwise_or.reduce(masks, axis=2).astype(np.float64)
    out[count == 0] = np.nan
    return out


def _segments(
    t: IntArray, step: IntArray, ok: BoolArray, p: FloatArray, window_ns: int, d: int
) -> tuple[IntArray, FloatArray, BoolArray]:
    """Gaps and energy of a window from its :func:`_frame`.

    Every valid row of a column closes a segment from the column's previous valid row. Returns
    the missing ticks inside ``[0, window_ns)`` of the ``d + 1`` presence columns, and the joules
    inside it and whether any segment overlapped it, of the ``d`` power columns.
    """
    if ok.all():  # every column has every row: each segment is one row to the next
        seg = np.ones((t.shape[0] - 1, t.shape[1]), dtype=np.bool_)
        t0, i0, p0, t, p = t[:-1], step[:-1], p[:-1], t[1:], p[1:]
    else:
        rows, cols = t.shape
        ridx = np.arange(rows, dtype=np.int64)[:, None]
        last = np.maximum.accumulate(np.where(ok, ridx, -1), axis=0)
        prev = np.empty_like(last)
        prev[0], prev[1:] = -1, last[:-1]
        seg = ok & (prev >= 0)
        idx, cidx = np.maximum(prev, 0), np.arange(cols)
        t0, i0, p0 = t[idx, cidx], step[idx, cidx], p[idx, cidx]
    dt = t - t0

    g = slice(0, d + 1)  # presence: missing ticks at t0 + k * interval, k = 1..missing
    missing = np.maximum((dt[:, g] + i0[:, g] // 2) // i0[:, g] - 1, 0)
    k_lo = np.maximum(-(t0[:, g] // i0[:, g]), 1)  # first tick at or after the window start
    k_hi = np.minimum(-((t0[:, g] - window_ns) // i0[:, g]) - 1, missing)  # last before the end
    gaps = np.where(seg[:, g], np.maximum(k_hi - k_lo + 1, 0), 0).sum(axis=0)

    e = slice(d + 1, None)  # power: trapezoid of the straight line, clipped to the window
    use = seg[:, e] & (dt[:, e] <= 2 * i0[:, e])
    ta, tb = t0[:, e] / _NS_PER_S, t[:, e] / _NS_PER_S
    pa, pb = p0[:, e], p[:, e]
    a, b = np.maximum(ta, 0.0), np.minimum(tb, window_ns / _NS_PER_S)
    slope = (pb - pa) / np.where(use, tb - ta, 1.0)
    use &= b > a
    joules = (b - a) * ((pa + slope * (a - ta)) + (pa + slope * (b - ta))) * 0.5
    return gaps, np.where(use, joules, 0.0).sum(axis=0), np.any(use, axis=0)


# -- the aggregator ---------------------------------------------------------------------------
class WindowAggregator:
    """Tumbling event-time windows per host, with device, host and fleet roll-ups.

    >>> from accelpilot.collectors.synthetic import synthetic_samples
    >>> agg = WindowAggregator(window_s=10.0, allowed_lateness_s=2.0)
    >>> t0 = 1_700_000_000 * 10**9
    >>> out = [a for s in synthetic_samples("h1", n_devices=2, n_ticks=13, start_ns=t0)
    ...        for a in agg.add(s)]
    >>> [(a.scope, a.key, a.sample_count) for a in out]  # doctest: +NORMALIZE_WHITESPACE
    [('device', 'h1/gpu0', 10), ('device', 'h1/gpu1', 10), ('host', 'h1', 10),
     ('fleet', 'fleet', 10)]
    """

    def __init__(
        self,
        window_s: float,
        allowed_lateness_s: float,
        host_idle_s: float | None = None,
        *,
        close_spread_s: float | None = None,
    ) -> None:
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s={window_s} must be > 0 and finite")
        if not (allowed_lateness_s >= 0 and math.isfinite(allowed_lateness_s)):
            raise ValueError(f"allowed_lateness_s={allowed_lateness_s} must be >= 0 and finite")
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.host_idle_s = float(
            window_s + allowed_lateness_s if host_idle_s is None else host_idle_s
        )
        self._window_ns = round(window_s * _NS_PER_S)
        self._lateness_ns = round(allowed_lateness_s * _NS_PER_S)
        self._idle_ns = round(self.host_idle_s * _NS_PER_S)
        self._hosts: dict[str, _Host] = {}
        self._host_max = np.full(64, _NEVER, dtype=np.int64)  # newest ts_ns by host index
        self._global_max_ns = _NEVER
        self._fleet_pending: dict[int, dict[str, Aggregate]] = {}
        self._fleet_next_end_ns: int | None = None
        self._fleet_done_until_ns = _NEVER
        self.late_dropped_total = 0
        self.duplicates_total = 0
        self.fleet_missed_host_windows_total = 0
        # Deferred closes (see close_due): None closes windows inside add().
        spread_ok = close_spread_s is None or (
            close_spread_s >= 0 and math.isfinite(close_spread_s)
        )
        if not spread_ok:
            raise ValueError(f"close_spread_s={close_spread_s} must be >= 0 and finite")
        self.close_spread_s = close_spread_s
        self._spread_ns = None if close_spread_s is None else round(close_spread_s * _NS_PER_S)
        self._due: dict[str, int] = {}  # host id -> its close deadline (ns, the caller's clock)
        self._due_heap: list[tuple[int, str]] = []
        self._newly_due: list[str] = []  # due since the last close_due, deadline not yet set

    # -- feeding --------------------------------------------------------------------------------
    def add(self, sample: HostSample, values: FloatArray | None = None) -> list[Aggregate]:
        """Take one sample; return the aggregates of the windows it closed (often none).

        ``values`` is :func:`sample_values` of ``sample`` when the caller already has it (one
        conversion shared by several aggregators); it is kept, not copied.
        """
        host = self._hosts.get(sample.host_id)
        if host is None:
            host = self._new_host(sample.host_id)
        ts, window_ns = sample.ts_ns, self._window_ns
        w = ts // window_ns
        if (w + 1) * window_ns <= host.closed_until_ns:
            self.late_dropped_total += 1
            return []
        win = host.windows.get(w)
        if win is None:
            win = host.windows[w] = _Window(w)
        elif ts in win.seen:
            self.duplicates_total += 1
            return []
        win.append(
            ts,
            max(round(sample.interval_s * _NS_PER_S), 1),
            list(sample.metrics),
            sample.device_ids,
            sample_values(sample) if values is None else values,
        )
        if ts <= host.max_ts_ns:
            return []
        host.max_ts_ns = ts
        self._host_max[host.index] = ts
        if ts > self._global_max_ns:
            self._global_max_ns = ts
        out: list[Aggregate] = []
        wm = ts - self._lateness_ns
        if wm > host.closed_until_ns:
            host.closed_until_ns = wm
            if self._has_due(host):
                if self._spread_ns is None:
                    self._close_host(host, wm, out)
                else:
                    self._mark_due(host.host_id)
        if self._spread_ns is not None:
            return out
        nxt = self._fleet_next_end_ns
        if nxt is not None and nxt <= self._global_max_ns - self._lateness_ns:
            self._emit_fleet(out, self._fleet_watermark())
        return out

    def flush_all(self) -> list[Aggregate]:
        """Close every open window (shutdown); hosts by id, then the fleet windows."""
        out: list[Aggregate] = []
        until_ns = self._fleet_done_until_ns
        for host_id in sorted(self._hosts):
            host = self._hosts[host_id]
            if host.windows:
                end = (max(host.windows) + 1) * self._window_ns
                host.closed_until_ns = max(host.closed_until_ns, end)
                self._close_host(host, end, out)
                until_ns = max(until_ns, end)
        self._due.clear()
        self._due_heap.clear()
        self._newly_due.clear()
        if self._spread_ns is None:
            self._emit_fleet(out, until_ns)
        return out

    def close_due(self, now_ns: int) -> list[Aggregate]:
        """With ``close_spread_s`` set: close the windows that :meth:`add` found complete, each
        host at its deadline, and return their aggregates (hosts in deadline order).

        A host whose windows became complete at ``t`` (the first call that sees it) is closed
        at ``t + close_spread_s x f(host)``, ``f`` a fixed fraction in [0, 1) per host id (CRC-32):
        when every host crosses a window boundary in the same second, their closes are spread
        over ``close_spread_s`` instead of landing in one batch in front of every sample behind
        it. A host more than one window behind ``now_ns`` (its newest sample older: a backlog,
        a replay) is closed at once: spread there, hosts would close out of event-time order
        across hosts, and the roll-up would emit fleet windows before their hosts arrived and
        again after. (Live, a fleet window waits for a host window two windows later, which
        comes after every host's spread close as long as the spread is under a window.)
        Statistics are those of immediate closing (a window's samples are complete when it
        is due; its energy's right edge may see its next sample more often). Until its window is
        closed a host's samples in it are not acknowledged (:meth:`closed_until_ns`). No fleet
        windows are made in this mode (the worker's roll-up stage makes them)."""
        if self._spread_ns is None:
            raise ValueError("close_due needs an aggregator made with close_spread_s")
        due, heap, hosts = self._due, self._due_heap, self._hosts
        behind_ns = now_ns - self._window_ns
        for host_id in self._newly_due:
            if due.get(host_id) != _NEVER:
                continue  # closed meanwhile (idle, resumed)
            if hosts[host_id].max_ts_ns < behind_ns:
                deadline = now_ns  # a backlog or a replay: nothing waits behind it live
            else:
                deadline = now_ns + round(self._spread_ns * zlib.crc32(host_id.encode()) / 2**32)
            due[host_id] = deadline
            heapq.heappush(heap, (deadline, host_id))
        self._newly_due.clear()
        out: list[Aggregate] = []
        while heap and heap[0][0] <= now_ns:
            deadline, host_id = heapq.heappop(heap)
            if due.get(host_id) != deadline:
                continue  # closed meanwhile (idle, flushed, resumed)
            del due[host_id]
            host = self._hosts[host_id]
            self._close_host(host, host.closed_until_ns, out)
        return out

    @property
    def due_hosts(self) -> int:
        """Hosts with complete windows waiting for :meth:`close_due` (a gauge)."""
        return len(self._due)

    def close_idle_hosts(self, idle_s: float, now_ns: int | None = None) -> list[Aggregate]:
        """Close every open window of hosts silent for ``idle_s``, so a host that stopped
        reporting does not hold its last windows (and its samples' offsets) open forever.

        With ``now_ns`` (a clock: the worker passes wall time), *silent* means no new sample
        from the host during ``idle_s`` of that clock, whatever their timestamps: a host whose
        samples arrive late but steadily (a partition read behind another after a rebalance, an
        agent draining its disk buffer) keeps its windows. Without it, silence is measured in
        event time (the newest sample seen from any host), which takes such a host for silent.
        """
        out: list[Aggregate] = []
        if now_ns is None:
            cutoff = self._global_max_ns - round(idle_s * _NS_PER_S)
            idle = [h for h in self._hosts.values() if h.windows and h.max_ts_ns < cutoff]
        else:
            idle_ns = round(idle_s * _NS_PER_S)
            idle = []
            for h in self._hosts.values():
                if h.max_ts_ns != h.checked_max_ts_ns:  # progress since the last check
                    h.checked_max_ts_ns, h.progress_ns = h.max_ts_ns, now_ns
                elif h.windows and now_ns - h.progress_ns >= idle_ns:
                    idle.append(h)
        for host in sorted(idle, key=lambda h: h.host_id):
            end = (max(host.windows) + 1) * self._window_ns
            host.closed_until_ns = max(host.closed_until_ns, end)
            self._due.pop(host.host_id, None)
            self._close_host(host, end, out)
        return out

    def resume_host(self, host_id: str, written_until_ns: int) -> None:
        """The windows of ``host_id`` ending at or before ``written_until_ns`` were written
        before (by this worker before a restart, or by the partition's previous owner): its
        samples in them are dropped as late (streams/host_state.py)."""
        host = self._hosts.get(host_id)
        if host is None:
            host = self._new_host(host_id)
        if written_until_ns > host.closed_until_ns:
            host.closed_until_ns = written_until_ns
            for w in [w for w in host.windows if (w + 1) * self._window_ns <= written_until_ns]:
                del host.windows[w]
            if host.host_id in self._due and not self._has_due(host):
                del self._due[host.host_id]

    def _mark_due(self, host_id: str) -> None:
        """``host_id`` has complete windows: :meth:`close_due` sets its deadline."""
        if host_id not in self._due:
            self._due[host_id] = _NEVER
            self._newly_due.append(host_id)

    def _has_due(self, host: _Host) -> bool:
        """The host's oldest open window is complete (its end reached by the watermark)."""
        return bool(host.windows) and (min(host.windows) + 1) * self._window_ns <= (
            host.closed_until_ns
        )

    def closed_until_ns(self, host_id: str) -> int | None:
        """Windows of ``host_id`` ending at or before this are closed and emitted (None: nothing
        closed); a complete window still waiting for :meth:`close_due` is not."""
        host = self._hosts.get(host_id)
        if host is None or host.closed_until_ns == _NEVER:
            return None
        if host.windows:
            return min(host.closed_until_ns, min(host.windows) * self._window_ns)
        return host.closed_until_ns

    @property
    def window_ns(self) -> int:
        return self._window_ns

    @property
    def open_windows(self) -> int:
        """Host windows currently open (a memory gauge)."""
        return sum(len(h.windows) for h in self._hosts.values())

    def _new_host(self, host_id: str) -> _Host:
        host = self._hosts[host_id] = _Host(host_id, len(self._hosts))
        if host.index >= len(self._host_max):
            grown = np.full(2 * len(self._host_max), _NEVER, dtype=np.int64)
            grown[: len(self._host_max)] = self._host_max
            self._host_max = grown
        return host

    # -- closing host windows -------------------------------------------------------------------
    def _close_host(self, host: _Host, until_ns: int, out: list[Aggregate]) -> None:
        for w in sorted(host.windows):
            if (w + 1) * self._window_ns > until_ns:
                break
            devices, host_agg = self._close_window(host, host.windows.pop(w))
            out.extend(devices)
            out.append(host_agg)
            if self._spread_ns is not None:
                continue  # no fleet windows when closes are deferred
            if host_agg.window_end_ns <= self._fleet_done_until_ns:
                self.fleet_missed_host_windows_total += 1
            else:
                self._fleet_pending.setdefault(w, {})[host.host_id] = host_agg
                end = host_agg.window_end_ns
                if self._fleet_next_end_ns is None or end < self._fleet_next_end_ns:
                    self._fleet_next_end_ns = end

    def _close_window(self, host: _Host, win: _Window) -> tuple[list[Aggregate], Aggregate]:
        ts, iv, values, present, names, devices = _canonical(win)
        n, m, d = values.shape
        start_ns, window_ns = win.index * self._window_ns, self._window_ns
        if POWER_METRIC in names:
            power = values[:, names.index(POWER_METRIC), :]
        else:
            power = np.full((n, d), np.nan)
        has_power = ~np.isnan(power)
        prev = _Edge(host.last, host.device_last, host.power_last)
        nxt = self._lookahead(
            host, start_ns + window_ns, int(iv.max()), devices, np.any(has_power, axis=0).tolist()
        )
        frame = _frame(ts - start_ns, iv, present, power, devices, (prev, nxt), start_ns)
        gap_counts, energy, overlapped = _segments(*frame, window_ns, d)
        gaps = gap_counts.tolist()
        with_energy = (has_power.any(axis=0) | overlapped).tolist()
        energy_j = energy.tolist()
        self._carry(host, ts, iv, devices, present, power)

        # One statistics pass over every device column and the host's per-instant series.
        x = np.concatenate([values, _host_series(values, names)[:, :, None]], axis=2)
        stats = column_stats(x.reshape(n, m * (d + 1)))
        per_column = _stats_dicts(names, stats, d + 1)
        end_ns = start_ns + window_ns
        counts = present.sum(axis=0).tolist()
        out = [
            Aggregate(
                scope="device",
                key=dev,
                host_id=host.host_id,
                window_s=self.window_s,
                window_start_ns=start_ns,
                window_end_ns=end_ns,
                sample_count=counts[j],
                gap_count=gaps[j],
                energy_j=energy_j[j] if with_energy[j] else None,
                metrics=per_column[j],
            )
            for j, dev in enumerate(devices)
        ]
        host_energy = [energy_j[j] for j in range(d) if with_energy[j]]
        host_agg = Aggregate(
            scope="host",
            key=host.host_id,
            host_id=host.host_id,
            window_s=self.window_s,
            window_start_ns=start_ns,
            window_end_ns=end_ns,
            sample_count=n,
            gap_count=gaps[d],
            energy_j=math.fsum(host_energy) if host_energy else None,
            metrics=per_column[d],
        )
        return out, host_agg

    def _lookahead(
        self, host: _Host, end_ns: int, max_step_ns: int, devices: list[str], with_power: list[bool]
    ) -> _Edge:
        """The first sample after a closing window, per device (and with power), from the later
        windows still open. Past ``end + 2 x interval`` nothing changes the closing window's
        counts or energy, so the scan stops there and the row reached stands in."""
        want_dev = set(devices)
        want_pow = {dev for dev, w in zip(devices, with_power, strict=True) if w}
        dev_next: dict[str, tuple[int, int]] = {}
        pow_next: dict[str, tuple[int, int, float]] = {}
        host_next: tuple[int, int] | None = None
        horizon_ns = end_ns + 2 * max_step_ns
        for w in sorted(host.windows):  # all later than the closing window
            win = host.windows[w]
            for i in sorted(range(len(win.ts_ns)), key=win.ts_ns.__getitem__):
                ts, step = win.ts_ns[i], win.interval_ns[i]
                if host_next is None:
                    host_next = (ts, step)
                if ts > horizon_ns:
                    dev_next.update(dict.fromkeys(want_dev, (ts, step)))
                    return _Edge(host_next, dev_next, pow_next)
                lay = win.layouts[win.layout_of_row[i]]
                row = win.rows[i]
                for k, dev in enumerate(lay.devs):
                    if dev in want_dev:
                        dev_next[dev] = (ts, step)
                        want_dev.discard(dev)
                    if dev in want_pow and lay.power_row is not None:
                        p = float(row[lay.power_row, k])
                        if p == p:  # not NaN
                            pow_next[dev] = (ts, step, p)
                            want_pow.discard(dev)
                if not want_dev and not want_pow:
                    return _Edge(host_next, dev_next, pow_next)
        return _Edge(host_next, dev_next, pow_next)

    @staticmethod
    def _carry(
        host: _Host,
        ts: IntArray,
        iv: IntArray,
        devices: list[str],
        present: BoolArray,
        power: FloatArray,
    ) -> None:
        """Remember the last sample of the closed window: the next window's left edge."""
        n = len(ts)
        host.last = last = (int(ts[-1]), int(iv[-1]))
        valid = ~np.isnan(power)
        if present[-1].all() and valid[-1].all():  # the usual case: the last row has it all
            p_last = power[-1].tolist()
            for j, dev in enumerate(devices):
                host.device_last[dev] = last
                host.power_last[dev] = (*last, p_last[j])
            return
        last_present = (n - 1 - np.argmax(present[::-1], axis=0)).tolist()
        any_power: list[bool] = np.any(valid, axis=0).tolist()
        last_power = (n - 1 - np.argmax(valid[::-1], axis=0)).tolist()
        for j, dev in enumerate(devices):
            r = last_present[j]
            host.device_last[dev] = (int(ts[r]), int(iv[r]))
            if any_power[j]:
                r = last_power[j]
                host.power_last[dev] = (int(ts[r]), int(iv[r]), float(power[r, j]))

    # -- fleet --------------------------------------------------------------------------------
    def _fleet_watermark(self) -> int:
        """The smallest watermark among live hosts (silent ones are not waited for)."""
        newest = self._host_max[: len(self._hosts)]
        live = newest[newest >= self._global_max_ns - self._idle_ns]
        return int(live.min()) - self._lateness_ns

    def _emit_fleet(self, out: list[Aggregate], until_ns: int) -> None:
        self._fleet_done_until_ns = max(self._fleet_done_until_ns, until_ns)
        for w in sorted(self._fleet_pending):
            if (w + 1) * self._window_ns > until_ns:
                break
            out.append(fleet_rollup(list(self._fleet_pending.pop(w).values())))
        pending = self._fleet_pending
        self._fleet_next_end_ns = (min(pending) + 1) * self._window_ns if pending else None

    # -- checkpoints --------------------------------------------------------------------------
    def get_state(self) -> bytes:
        """Everything needed to resume exactly here, as msgpack (see :meth:`from_state`)."""
        hosts = [
            _HostState(
                host_id=h.host_id,
                max_ts_ns=h.max_ts_ns,
                closed_until_ns=h.closed_until_ns,
                last=h.last,
                device_last=dict(h.device_last),
                power_last=dict(h.power_last),
                windows=[_window_state(h.windows[w]) for w in sorted(h.windows)],
            )
            for h in self._hosts.values()
        ]
        state = _AggregatorState(
            v=_STATE_VERSION,
            window_s=self.window_s,
            allowed_lateness_s=self.allowed_lateness_s,
            host_idle_s=self.host_idle_s,
            hosts=hosts,
            fleet_pending={w: dict(a) for w, a in self._fleet_pending.items()},
            fleet_done_until_ns=self._fleet_done_until_ns,
            late_dropped_total=self.late_dropped_total,
            duplicates_total=self.duplicates_total,
            fleet_missed_host_windows_total=self.fleet_missed_host_windows_total,
        )
        return msgspec.msgpack.encode(state)

    @classmethod
    def from_state(cls, data: bytes, *, close_spread_s: float | None = None) -> WindowAggregator:
        """An aggregator that continues exactly where the one that wrote ``data`` was (with
        ``close_spread_s``: deferring closes; its complete windows are due from the first
        :meth:`close_due`)."""
        st = msgspec.msgpack.decode(data, type=_AggregatorState)
        if st.v != _STATE_VERSION:
            raise ValueError(f"aggregator state v{st.v} is not v{_STATE_VERSION}")
        agg = cls(st.window_s, st.allowed_lateness_s, st.host_idle_s, close_spread_s=close_spread_s)
        for hs in st.hosts:
            host = agg._new_host(hs.host_id)
            host.max_ts_ns, host.closed_until_ns, host.last = (
                hs.max_ts_ns,
                hs.closed_until_ns,
                hs.last,
            )
            host.device_last, host.power_last = dict(hs.device_last), dict(hs.power_last)
            host.windows = {ws.index: _restore_window(ws) for ws in hs.windows}
            agg._host_max[host.index] = hs.max_ts_ns
            agg._global_max_ns = max(agg._global_max_ns, hs.max_ts_ns)
            if close_spread_s is not None and agg._has_due(host):
                agg._mark_due(host.host_id)
        agg._fleet_pending = {w: dict(a) for w, a in st.fleet_pending.items()}
        if agg._fleet_pending:
            agg._fleet_next_end_ns = (min(agg._fleet_pending) + 1) * agg._window_ns
        agg._fleet_done_until_ns = st.fleet_done_until_ns
        agg.late_dropped_total = st.late_dropped_total
        agg.duplicates_total = st.duplicates_total
        agg.fleet_missed_host_windows_total = st.fleet_missed_host_windows_total
        return agg


# -- helpers of closing -----------------------------------------------------------------------
class _Edge(NamedTuple):
    """One sample just outside a window: per host, per device, per device with power."""

    host: tuple[int, int] | None
    device: dict[str, tuple[int, int]]
    power: dict[str, tuple[int, int, float]]


def _canonical(
    win: _Window,
) -> tuple[IntArray, IntArray, FloatArray, BoolArray, list[str], list[str]]:
    """The window's rows in time order and its device columns in sorted order (metrics stay in
    first-seen order: they are independent columns, sorted only on output)."""
    values, present = win.materialize()
    ts_list, devices = win.ts_ns, win.device_ids
    ts = np.array(ts_list, dtype=np.int64)
    iv = np.array(win.interval_ns, dtype=np.int64)
    if any(a > b for a, b in itertools.pairwise(ts_list)):
        order = np.argsort(ts, kind="stable")
        ts, iv, values, present = ts[order], iv[order], values[order], present[order]
    if devices != sorted(devices):
        d_order = sorted(range(len(devices)), key=devices.__getitem__)
        values, present = values[:, :, d_order], present[:, d_order]
        devices = [devices[j] for j in d_order]
    return ts, iv, values, present, list(win.metric_names), list(devices)


def _frame(
    rel: IntArray,
    iv: IntArray,
    present: BoolArray,
    power: FloatArray,
    devices: list[str],
    edges: tuple[_Edge, _Edge],
    start_ns: int,
) -> tuple[IntArray, IntArray, BoolArray, FloatArray]:
    """Times (relative to the window start), intervals, validity and power of the window's rows
    with one edge row before (the last closed sample) and one after (the next sample), in
    ``2 d + 1`` columns: device presence, host presence, device power."""
    n, d = present.shape
    cols = 2 * d + 1
    t = np.zeros((n + 2, cols), dtype=np.int64)
    step = np.ones((n + 2, cols), dtype=np.int64)
    ok = np.zeros((n + 2, cols), dtype=np.bool_)
    p = np.zeros((n + 2, cols))
    t[1:-1] = rel[:, None]
    step[1:-1] = iv[:, None]
    ok[1:-1, :d] = present
    ok[1:-1, d] = True
    ok[1:-1, d + 1 :] = valid = ~np.isnan(power)
    p[1:-1, d + 1 :] = np.where(valid, power, 0.0)
    for r, edge in ((0, edges[0]), (n + 1, edges[1])):
        # (ts, interval, power, valid) per column, written as one row each
        cells: list[tuple[Any, ...] | None] = [edge.device.get(dev) for dev in devices]
        cells.append(edge.host)
        cells += [edge.power.get(dev) for dev in devices]
        t[r] = [c[0] - start_ns if c else 0 for c in cells]
        step[r] = [c[1] if c else 1 for c in cells]
        ok[r] = [c is not None for c in cells]
        p[r] = [c[2] if c and len(c) == 3 else 0.0 for c in cells]
    return t, step, ok, p


def _window_state(win: _Window) -> _WindowState:
    values, present = win.materialize()
    return _WindowState(
        index=win.index,
        ts_ns=list(win.ts_ns),
        interval_ns=list(win.interval_ns),
        metric_names=list(win.metric_names),
        device_ids=list(win.device_ids),
        values=values.tobytes(),
        present=present.tobytes(),
    )


def _restore_window(s: _WindowState) -> _Window:
    n, m, d = len(s.ts_ns), len(s.metric_names), len(s.device_ids)
    values = np.frombuffer(s.values, dtype=np.float64).reshape(n, m, d)
    present = np.frombuffer(s.present, dtype=np.bool_).reshape(n, d)
    win = _Window(s.index)
    names, devs = list(s.metric_names), list(s.device_ids)
    win.metric_names, win.metric_pos = names, {name: i for i, name in enumerate(names)}
    win.device_ids, win.device_pos = devs, {dev: j for j, dev in enumerate(devs)}
    layout_by_mask: dict[bytes, int] = {}
    all_metrics = np.arange(m, dtype=np.int64)
    for i in range(n):
        mask = present[i]
        li = layout_by_mask.get(key := mask.tobytes())
        if li is None:
            di = np.flatnonzero(mask).astype(np.int64)
            win.layouts.append(_Layout(names, [devs[j] for j in di], all_metrics, di))
            li = layout_by_mask[key] = len(win.layouts) - 1
        win.rows.append(values[i][:, win.layouts[li].di].copy())
        win.layout_of_row.append(li)
    win.ts_ns, win.interval_ns = list(s.ts_ns), list(s.interval_ns)
    win.seen = set(win.ts_ns)
    return win


# -- fleet roll-up ----------------------------------------------------------------------------
def fleet_rollup(hosts: list[Aggregate]) -> Aggregate:
    """Combine the host aggregates of one window by the rules of the module docstring."""
    hosts = sorted(hosts, key=lambda a: a.key)
    first = hosts[0]
    names = sorted({name for a in hosts for name in a.metrics})
    metrics = {
        name: _combine(host_reduction(name), [a.metrics[name] for a in hosts if name in a.metrics])
        for name in names
    }
    energies = [a.energy_j for a in hosts if a.energy_j is not None]
    return Aggregate(
        scope="fleet",
        key="fleet",
        host_id=None,
        window_s=first.window_s,
        window_start_ns=first.window_start_ns,
        window_end_ns=first.window_end_ns,
        sample_count=sum(a.sample_count for a in hosts),
        gap_count=sum(a.gap_count for a in hosts),
        energy_j=math.fsum(energies) if energies else None,
        metrics=metrics,
    )


def _combine(rule: Reduction, stats: list[MetricStats]) -> MetricStats:
    count = sum(s.count for s in stats)
    if rule == "sum":
        return MetricStats(
            min=math.fsum(s.min for s in stats),
            max=math.fsum(s.max for s in stats),
            mean=math.fsum(s.mean for s in stats),
            p95=math.fsum(s.p95 for s in stats),
            last=math.fsum(s.last for s in stats),
            count=count,
        )
    lo, hi = min(s.min for s in stats), max(s.max for s in stats)
    mean = min(max(math.fsum(s.count * s.mean for s in stats) / count, lo), hi)
    if rule == "mean":
        p95 = min(max(math.fsum(s.count * s.p95 for s in stats) / count, lo), hi)
        last = math.fsum(s.last for s in stats) / len(stats)
    elif rule == "max":
        p95, last = max(s.p95 for s in stats), max(s.last for s in stats)
    else:
        p95 = max(s.p95 for s in stats)
        last = float(functools.reduce(operator.or_, (int(s.last) for s in stats), 0))
    return MetricStats(min=lo, max=hi, mean=mean, p95=p95, last=last, count=count)
