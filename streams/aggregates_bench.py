"""Throughput of :class:`~accelpilot.streams.aggregates.WindowAggregator` (no Kafka, no decode).

Samples are made before the clocks start. Throughput is per CPU second of this process
(``time.process_time``), which a busy shared machine disturbs far less than wall time; the
wall time is reported beside it.

>>> r = bench_aggregator(n_hosts=3, n_devices=2, n_ticks=12)
>>> r.device_samples, r.aggregates > 0
(72, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.schemas.samples import HostSample
from accelpilot.streams.aggregates import WindowAggregator

_T0_NS = 1_700_000_000 * 10**9


@dataclass(frozen=True, slots=True)
class BenchResult:
    device_samples: int
    aggregates: int
    cpu_s: float  # feeding every sample (closing windows on the way) and the final flush
    wall_s: float
    device_samples_per_s: float  # per CPU second
    state_bytes: int  # a checkpoint taken half-way
    state_cpu_s: float  # get_state + from_state of that checkpoint


def bench_aggregator(
    n_hosts: int = 1_000,
    n_devices: int = 8,
    n_ticks: int = 40,
    interval_s: float = 1.0,
    window_s: float = 10.0,
    allowed_lateness_s: float = 2.0,
) -> BenchResult:
    """Feed ``n_hosts`` x ``n_ticks`` synthetic samples tick by tick, hosts interleaved as a
    consumer of many partitions sees them, checkpoint and restore half-way, flush at the end."""
    per_host = [
        list(
            synthetic_samples(
                f"host{h:05d}",
                n_devices=n_devices,
                n_ticks=n_ticks,
                start_ns=_T0_NS,
                interval_s=interval_s,
                seed=h,
            )
        )
        for h in range(n_hosts)
    ]
    stream: list[HostSample] = [per_host[h][t] for t in range(n_ticks) for h in range(n_hosts)]
    del per_host
    half = len(stream) // 2
    agg = WindowAggregator(window_s, allowed_lateness_s)
    produced = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for sample in stream[:half]:
        produced += len(agg.add(sample))
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    cpu = time.process_time()
    state = agg.get_state()
    agg = WindowAggregator.from_state(state)
    state_cpu_s = time.process_time() - cpu
    cpu, wall = time.process_time(), time.perf_counter()
    for sample in stream[half:]:
        produced += len(agg.add(sample))
    produced += len(agg.flush_all())
    cpu_s += time.process_time() - cpu
    wall_s += time.perf_counter() - wall
    device_samples = len(stream) * n_devices
    return BenchResult(
        device_samples=device_samples,
        aggregates=produced,
        cpu_s=cpu_s,
        wall_s=wall_s,
        device_samples_per_s=device_samples / cpu_s,
        state_bytes=len(state),
        state_cpu_s=state_cpu_s,
    )
