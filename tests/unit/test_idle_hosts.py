"""A host that lags behind the others is not a silent host (issue #4 robustness tests).

The worker closes the windows of hosts "silent for a window + lateness + 10 s" with
``WindowAggregator.close_idle_hosts``. Measured in fleet event time (the newest sample of any
host), a host whose samples arrive late but steadily -- its agent draining a disk buffer after a
broker outage, or its partition read behind another one after a rebalance or a restart -- was
taken for silent: every batch closed its open windows early (written partial) and its next
samples were dropped as late (found by tests/service/test_two_workers.py, "tail missing"
windows). The worker now passes the wall clock (``now_ns``), as here.
"""

from __future__ import annotations

import pytest

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.schemas.samples import HostSample
from accelpilot.streams.aggregates import WindowAggregator

WINDOW_S, LATENESS_S = 60.0, 5.0
IDLE_S = WINDOW_S + LATENESS_S + 10.0  # what streams/app.py uses


def test_a_host_100s_behind_keeps_complete_windows() -> None:
    order = _lagging_order()
    agg = WindowAggregator(WINDOW_S, LATENESS_S)
    out = []
    wall_ns = 1_800_000_000 * 10**9
    for i in range(0, len(order), 50):  # batches, as the worker runs them, 0.2 s apart
        for s in order[i : i + 50]:
            out += agg.add(s)
        wall_ns += 200_000_000
        out += agg.close_idle_hosts(IDLE_S, now_ns=wall_ns)
    y_counts = [a.sample_count for a in out if a.scope == "device" and a.host_id == "y"]
    assert agg.late_dropped_total == 0
    assert y_counts == [60] * len(y_counts) and len(y_counts) >= 4


@pytest.mark.xfail(
    strict=True,
    reason="known limit of the event-time mode (no now_ns): a lagging host is taken for silent, "
    "its windows closed early and its samples dropped as late; the worker passes now_ns",
)
def test_event_time_mode_takes_a_lagging_host_for_silent() -> None:
    agg = WindowAggregator(WINDOW_S, LATENESS_S)
    order = _lagging_order()
    for i in range(0, len(order), 50):
        for s in order[i : i + 50]:
            agg.add(s)
        agg.close_idle_hosts(IDLE_S)
    assert agg.late_dropped_total == 0


def _lagging_order() -> list[HostSample]:
    """Hosts x and y; y's samples arrive 100 s of event time after x's, steadily."""
    t0 = 1_700_000_040 * 10**9 // (60 * 10**9) * 60 * 10**9
    x = list(synthetic_samples("x", n_devices=1, n_ticks=400, start_ns=t0, seed=1))
    y = list(synthetic_samples("y", n_devices=1, n_ticks=400, start_ns=t0, seed=2))
    return [s for k in range(400) for s in ([x[k]] + ([y[k - 100]] if k >= 100 else []))]


def test_the_worker_closes_a_silent_hosts_windows_within_a_second_of_idle_s() -> None:
    """BatchStages looks for silent hosts at most once a second of its clock (the search walks
    every host): with batches every 0.25 s, a host that stops is closed between ``idle_s`` and
    ``idle_s`` + 1 s after the last batch that brought it a new sample, never before."""
    from accelpilot.config import WorkerSettings
    from accelpilot.schemas import codec
    from accelpilot.streams.batch_stages import IDLE_CHECK_NS, BatchStages

    t0 = 1_800_000_000 * 10**9
    clock = [t0]
    stages = BatchStages(WorkerSettings(close_spread_s=0.0), clock=lambda: clock[0])
    samples = list(synthetic_samples("h1", n_devices=2, n_ticks=15, start_ns=t0 - 20 * 10**9))
    raws = [codec.encode(s) for s in samples]
    stages.run(raws, list(range(len(raws))), clock[0])  # h1's last new sample: at t0
    closed_at = None
    while closed_at is None and clock[0] < t0 + round((stages.idle_s + 5) * 1e9):
        clock[0] += IDLE_CHECK_NS // 4
        out = stages.run([], [], clock[0])
        if any(a.scope == "host" for a in out.aggregates):
            closed_at = (clock[0] - t0) / 1e9
    assert closed_at is not None
    assert stages.idle_s <= closed_at <= stages.idle_s + IDLE_CHECK_NS / 1e9
