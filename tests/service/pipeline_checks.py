"""Exactly-once checks of the worker's output for the robustness tests: a steady load of ticks in
the background, the aggregate windows the published samples must produce, what InfluxDB holds."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import msgspec

from accelpilot.collectors.backends.sim import SimBackend, SimFleet
from accelpilot.collectors.publisher import KafkaPublisher
from accelpilot.collectors.sampler import Sampler
from accelpilot.collectors.synthetic import synthetic_samples
from accelpilot.config import Settings
from accelpilot.optimizer.scenario import load_bundled_scenario
from accelpilot.schemas.samples import HostSample
from accelpilot.schemas.topics import SAMPLES
from accelpilot.stack.influxdb import influxql
from accelpilot.streams.aggregate_lines import window_tag

#: (device id, window tag, window start ns) -> sample_count
Windows = dict[tuple[str, str, int], int]


def fleet_ticks(start_ns: int, synthetic_hosts: Iterable[str] = ()) -> Iterator[list[HostSample]]:
    """One list of samples per second of event time from ``start_ns``: the bundled demo fleet
    (simulated, with its injected faults) plus ``synthetic_hosts`` (4 GPUs each)."""
    fleet = SimFleet(load_bundled_scenario("demo-fleet"))
    samplers = []
    for host in fleet.hosts:
        backend = SimBackend(fleet, host)
        samplers.append(Sampler(host, [backend], backend.discover(), 1.0, clock_ns=time.time_ns))
    synthetic = [
        synthetic_samples(h, n_devices=4, n_ticks=10**6, start_ns=start_ns, seed=i)
        for i, h in enumerate(synthetic_hosts)
    ]
    k = 0
    while True:
        fleet.advance()
        ts_ns = start_ns + k * 10**9
        tick = [
            msgspec.structs.replace(sampler.sample(), ts_ns=ts_ns, agent=None)
            for sampler in samplers
        ]
        tick += [next(gen) for gen in synthetic]
        yield tick
        k += 1


class SteadyPublisher(threading.Thread):
    """Publishes ``ticks`` to ``telemetry.samples`` at ``ticks_per_s`` until stopped or
    ``max_ticks``; ``published`` holds every sample sent (flushed before the thread ends)."""

    def __init__(
        self,
        settings: Settings,
        ticks: Iterator[list[HostSample]],
        ticks_per_s: float,
        max_ticks: int,
    ) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.ticks = ticks
        self.period_s = 1.0 / ticks_per_s
        self.max_ticks = max_ticks
        self.published: list[HostSample] = []
        self.ticks_sent = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with KafkaPublisher(
                self.settings.kafka.bootstrap_servers, self.settings.topic(SAMPLES)
            ) as pub:
                next_at = time.monotonic()
                while self.ticks_sent < self.max_ticks and not self._stop_event.is_set():
                    for sample in next(self.ticks):
                        pub.send(sample.host_id, sample)
                        self.published.append(sample)
                    self.ticks_sent += 1
                    next_at += self.period_s
                    self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as e:  # reported by finish()
            self.error = e

    def wait_ticks(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.ticks_sent < n and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(self, timeout_s: float = 120.0) -> list[HostSample]:
        """Wait for the last tick (or stop now if ``timeout_s`` is 0); the samples published."""
        if timeout_s == 0:
            self._stop_event.set()
        self.join(timeout_s or 60.0)
        assert not self.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error
        return self.published


def expected_device_windows(
    samples: Iterable[HostSample], windows_s: Iterable[float], lateness_s: float
) -> Windows:
    """The device windows a worker must have written for ``samples``: those its per-host
    watermark (newest ``ts_ns`` - lateness) has closed, each with its sample count."""
    samples = list(samples)
    newest: dict[str, int] = {}
    for s in samples:
        newest[s.host_id] = max(newest.get(s.host_id, s.ts_ns), s.ts_ns)
    out: Counter[tuple[str, str, int]] = Counter()
    for window_s in windows_s:
        window_ns, tag = round(window_s * 1e9), window_tag(window_s)
        for s in samples:
            start = s.ts_ns // window_ns * window_ns
            if start + window_ns <= newest[s.host_id] - round(lateness_s * 1e9):
                for device in s.device_ids:
                    out[(device, tag, start)] += 1
    return dict(out)


def device_windows_in_influx(settings: Settings) -> Windows:
    body = influxql(
        settings.influx.url,
        'SELECT sample_count FROM device_agg GROUP BY device, "window"',
        settings.influx.database,
    )
    out: Windows = {}
    for series in body["results"][0].get("series", []):
        tags = series["tags"]
        for ts, count in series["values"]:
            out[(tags["device"], tags["window"], ts)] = int(count)
    return out


def count_device_samples(settings: Settings) -> int:
    body = influxql(
        settings.influx.url, "SELECT count(seq) FROM device_sample", settings.influx.database
    )
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def wait_until(done: Callable[[], bool], timeout_s: float, check: Callable[[], None]) -> bool:
    """Poll ``done`` every half second until it holds or ``timeout_s`` passes; ``check`` runs
    on each round (e.g. assert the worker is alive)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check()
        if done():
            return True
        time.sleep(0.5)
    return done()
