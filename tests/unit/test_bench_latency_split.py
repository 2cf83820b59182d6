"""``bench pipeline``'s breakdown of the slowest alerts (issue #4 tail latency): the worker's
side and delivery, when they happened, and the cores used meanwhile."""

from __future__ import annotations

from accelpilot.streams.bench_pipeline import _alert_figures, _CoreSampler

S, MS = 10**9, 10**6
T0 = 1_800_000_020 * S  # second 20 of a minute


def test_each_alert_is_split_into_the_workers_side_and_delivery() -> None:
    # (sample ts, alert record's Kafka timestamp in ms, arrival)
    times = [(T0 + k * S, (T0 + k * S) // MS + 100, T0 + k * S + 103 * MS) for k in range(50)]
    times.append((T0 + 7 * S, (T0 + 7 * S) // MS + 600, T0 + 7 * S + 640 * MS))
    out = _alert_figures(times, T0 - 5 * S)
    assert (out["n"], out["p50"]) == (51, 103.0)
    assert out["to_send_ms"] == {"p50": 100.0, "p99": 100.0 + (600 - 100) * 0.5}
    assert out["delivery_ms"]["p50"] == 3.0
    first = out["slowest"][0]
    assert first == {"ms": 640.0, "to_send_ms": 600.0, "phase_s": 12.0, "second_of_minute": 27.0}
    assert len(out["slowest"]) == 10


def test_cores_busy_spans_the_samples_around_the_wait() -> None:
    busy = _CoreSampler({})
    # The worker uses half a core until T0 + 1 s, then a whole one; the machine always 2.
    for k in range(30):
        t = T0 + k * S // 10
        worker_s = 0.05 * min(k, 10) + 0.1 * max(k - 10, 0)
        busy.samples.append((t, {"worker": worker_s, "machine": 0.2 * k}))
    assert busy.cores_busy(T0 + 2 * S // 10, T0 + 5 * S // 10) == {"worker": 0.5, "machine": 2.0}
    assert busy.cores_busy(T0 + 15 * S // 10, T0 + 2 * S) == {"worker": 1.0, "machine": 2.0}
    assert busy.cores_busy(T0 - S, T0) == {}  # before the first sample: not covered
    out = _alert_figures([(T0 + 2 * S, (T0 + 2 * S) // MS + 300, T0 + 2 * S + 305 * MS)], T0, busy)
    assert out["slowest"][0]["cores_busy"] == {"worker": 1.0, "machine": 2.0}


def test_alerts_of_one_probe_tick_show_how_far_apart_they_arrived() -> None:
    # Two probe ticks 2.4 s apart, five fault hosts each stamped 1 ms apart: the first tick's
    # alerts delivered one after another (a 6 ms round trip each), the second's together.
    serial = [(T0 + h * MS, 0, T0 + 100 * MS + h * 6 * MS) for h in range(5)]
    together = [(T0 + 2400 * MS + h * MS, 0, T0 + 2500 * MS) for h in range(5)]
    lone = [(T0 + 9 * S, 0, T0 + 9 * S + 50 * MS)]  # a tick with one alert has no spread
    out = _alert_figures(together + lone + serial, T0)
    spread = out["same_tick_spread_ms"]
    assert spread["ticks"] == 2
    assert spread["p50"] == (24.0 + 0.0) / 2  # 4 round trips; none
    assert spread["p99"] > 23.0
