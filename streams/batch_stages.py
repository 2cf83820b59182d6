"""The worker's pure work on one batch of ``telemetry.samples`` records: ingest, line protocol,
detection and alerts, windowed aggregates, and which records may be acknowledged.

No Kafka and no InfluxDB here: the worker's ingest loop (streams/ingest_loop.py) and
``accelpilot bench pipeline`` (its in-process stage figure) run this same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from accelpilot.config import WorkerSettings
from accelpilot.errors import SchemaError
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.alerts import Alert
from accelpilot.schemas.anomalies import AnomalyScore
from accelpilot.schemas.samples import HostSample
from accelpilot.streams.acks import AckGate
from accelpilot.streams.aggregate_lines import AggregateFormatter
from accelpilot.streams.aggregates import FloatArray, WindowAggregator, sample_values
from accelpilot.streams.alerting import DeviceMonitor
from accelpilot.streams.event_lines import alert_lines, anomaly_lines
from accelpilot.streams.host_state import HostRecord
from accelpilot.streams.influx_lines import SampleFormatter
from accelpilot.streams.ingest import ingest_sample

log = logging.getLogger(__name__)

#: Silent hosts are looked for at most this often (clock ns): the search walks every host of
#: the worker, and the silence it looks for is over a minute long.
IDLE_CHECK_NS = 10**9


def raw_every_ns(w: WorkerSettings) -> int | None:
    """The period of ``worker.raw_samples = "every"`` in ns; None for ``"all"``."""
    return None if w.raw_samples == "all" else round(w.raw_every_s * 1e9)


def raw_line_due(sample: HostSample, every_ns: int | None) -> bool:
    """Whether ``sample`` gets raw ``device_sample`` lines: always (``every_ns`` None,
    ``worker.raw_samples = "all"``), else the samples whose ``ts_ns`` falls in the first
    ``interval_s`` of each ``every_ns`` period (a function of the sample alone, so a replay
    writes the same points)."""
    return every_ns is None or sample.ts_ns % every_ns < sample.interval_s * 1e9


def close_spreads_s(close_spread_s: float, windows_s: Sequence[float]) -> list[float]:
    """How long each window size's closes are spread over (``worker.close_spread_s``).

    ``close_spread_s`` is the smallest window's; a larger window's grows with its length, so the
    closes of a minute boundary (every host's 10 s *and* 60 s windows: twice a 10 s boundary's
    work, 5 s after the minute) do not pile up in the same 5 s; each is at most half its window
    (the fleet roll-up needs every host's window closed a window later).

    >>> close_spreads_s(5.0, (10.0, 60.0))
    [5.0, 30.0]
    >>> close_spreads_s(8.0, (10.0, 60.0, 300.0))
    [5.0, 30.0, 150.0]
    >>> close_spreads_s(0.0, (10.0, 60.0))
    [0.0, 0.0]
    """
    smallest = min(windows_s)
    spread = min(close_spread_s, smallest / 2)
    return [min(spread * win / smallest, win / 2) for win in windows_s]


class InternalError(SchemaError):
    """A bug of ours met while handling one message: it goes to the DLQ, the worker goes on."""


@dataclass(slots=True)
class BatchOutput:
    """What one batch produced: rejects (index in the batch, error), InfluxDB lines, payloads
    to publish, and the tokens (events) whose windows have all closed."""

    rejected: list[tuple[int, Exception]]
    lines: list[str]
    alerts: list[Alert]
    anomalies: list[AnomalyScore]
    aggregates: list[Aggregate]
    releasable: list[Any]
    accepted: list[HostSample]  # between the two steps of BatchStages
    held: list[Any]
    values: list[FloatArray]  # sample_values of each accepted sample


class BatchStages:
    """The worker's pure work on one batch (no Kafka, no InfluxDB): ingest, line protocol,
    windowed aggregates, detection and alerts, and which events may be acknowledged.

    The worker's ingest loop and ``accelpilot bench pipeline`` (its in-process stage figure) run
    this same code.
    """

    def __init__(
        self,
        w: WorkerSettings,
        monitor: DeviceMonitor | None = None,
        clock: Callable[[], int] | None = None,
        host_record: Callable[[str], HostRecord | None] | None = None,
    ) -> None:
        self.monitor = monitor or DeviceMonitor()
        # Every line is tagged with the cluster this worker group serves (worker.cluster).
        self.cluster = w.cluster
        self.sample_format = SampleFormatter(w.cluster)
        # Which samples get raw lines (worker.raw_samples): all, or one per raw_every_s.
        self.raw_every_ns = raw_every_ns(w)
        self.aggregate_format = AggregateFormatter(w.cluster)
        self.clock = clock  # ns; wall time (time.time_ns) when None
        self.max_future_ns = int(w.max_future_skew_s * 1e9)
        self.windows_s = list(w.windows_s)
        self.allowed_lateness_s = w.allowed_lateness_s
        # Per window size (close_spreads_s): a minute's closes spread over 30 s, not 5.
        self.close_spreads_s = close_spreads_s(w.close_spread_s, w.windows_s)
        # The durable record of each host's windows already written (streams/host_state.py),
        # looked up once per host after each reset.
        self.host_record = host_record
        self.aggregators: list[WindowAggregator] = []
        self.gate = AckGate([])
        self._resumed: set[str] = set()
        # Per host, the newest sample time detection has seen (monitor state is never reset).
        self.observed_ns: dict[str, int] = {}
        self._skip_until_ns: dict[str, int] = {}
        self.reset_windows()
        # A host silent this long (event time) has its open windows closed and its samples
        # acked.
        self.idle_s = max(w.windows_s) + w.allowed_lateness_s + 10.0
        self._idle_checked_ns: int | None = None  # the clock at the last search

    def reset_windows(self, landed_ns: dict[str, int] | None = None) -> None:
        """Forget every open window (a rebalance: partitions are read again from their
        committed offsets); the hosts' durable records are looked up again. ``landed_ns``: per
        host, the newest sample whose detection's effects landed, when that is behind
        :attr:`observed_ns` (a drain that timed out); replayed samples after it are detected
        again."""
        self.aggregators = [
            WindowAggregator(win, self.allowed_lateness_s, close_spread_s=spread_s)
            for win, spread_s in zip(self.windows_s, self.close_spreads_s, strict=True)
        ]
        self.gate = AckGate(self.aggregators)
        self._resumed = set()
        # Replayed samples up to here were detected already (by this worker: the monitor is
        # not reset; or by the host's previous owner: raised in _resume from its record).
        self._skip_until_ns = dict(self.observed_ns if landed_ns is None else landed_ns)

    def _resume(self, host_ids: Iterable[str]) -> None:
        """The first samples of ``host_ids`` since a reset: seed their windows and detection
        from their records (every host of a batch at once: a rebalance's thousands of hosts
        restored one by one took time quadratic in them)."""
        detection: dict[str, bytes] = {}
        for host_id in host_ids:
            self._resumed.add(host_id)
            record = None if self.host_record is None else self.host_record(host_id)
            if record is None:
                continue
            for aggregator in self.aggregators:
                end = record.written_until_ns(aggregator.window_s)
                if end is not None:
                    aggregator.resume_host(host_id, end)
            if record.detection and record.observed_ns > self.observed_ns.get(host_id, -1):
                # Another worker (or this one before a restart) detected up to
                # ``observed_ns``: go on with its open episodes, and leave its samples to it.
                detection[host_id] = record.detection
                log.debug("%s: detection state restored as of %d", host_id, record.observed_ns)
                self.observed_ns[host_id] = record.observed_ns
                self._skip_until_ns[host_id] = record.observed_ns
        if detection:
            self.monitor.restore_hosts(detection)
            log.info("detection state restored for %d hosts", len(detection))

    def detection_states(self, hosts: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        """Per host of ``hosts`` that detection has seen: its detection state and the newest
        sample time it reflects, for the host's record (streams/host_state.py)."""
        observed = self.observed_ns
        states = self.monitor.host_states([h for h in hosts if h in observed])
        return {h: (state, observed[h]) for h, state in states.items()}

    def run(self, raws: Sequence[bytes], tokens: Sequence[Any], now_ns: int) -> BatchOutput:
        """Both steps at once (see :meth:`detect` and :meth:`aggregate`)."""
        return self.aggregate(self.detect(raws, tokens, now_ns))

    def detect(self, raws: Sequence[bytes], tokens: Sequence[Any], now_ns: int) -> BatchOutput:
        """Step 1, the urgent part: ingest, sample lines, detection and alerts. The worker
        publishes the alerts before step 2, so closing a burst of windows never delays them."""
        lines: list[str] = []
        accepted: list[HostSample] = []
        held: list[Any] = []
        values: list[FloatArray] = []
        rejected: list[tuple[int, Exception]] = []
        sample_lines = self.sample_format.lines
        every_ns = self.raw_every_ns
        for i, raw in enumerate(raws):
            try:
                sample = ingest_sample(raw, now_ns, self.max_future_ns)
            except Exception as e:  # never crash on input: every failure is a dead letter
                rejected.append((i, e))
                continue
            if raw_line_due(sample, every_ns):
                lines += sample_lines(sample)
            accepted.append(sample)
            values.append(sample_values(sample))  # one conversion for detection and windows
            held.append(tokens[i])
        # Detection: the detector ensemble, failure-risk rules and the alert engine, over the
        # samples not detected already (a replay after a rebalance or restart: those up to the
        # host record's ``observed_ns`` were, by the worker whose engine state it carries).
        resumed, skip, observed = self._resumed, self._skip_until_ns, self.observed_ns
        new_hosts = [h for h in dict.fromkeys(s.host_id for s in accepted) if h not in resumed]
        if new_hosts:
            self._resume(new_hosts)
        fresh, fresh_values = [], []
        for sample, v in zip(accepted, values, strict=True):
            host = sample.host_id
            if sample.ts_ns <= skip.get(host, -1):
                continue
            fresh.append(sample)
            fresh_values.append(v)
            if sample.ts_ns > observed.get(host, -1):
                observed[host] = sample.ts_ns
        anomalies, alerts = self.monitor.observe_batch(fresh, fresh_values)
        if alerts:  # every alert names the cluster this worker group serves
            cluster = self.cluster
            alerts = [msgspec.structs.replace(a, cluster=cluster) for a in alerts]
        lines += anomaly_lines(anomalies, cluster=self.cluster)
        lines += alert_lines(alerts, cluster=self.cluster)
        return BatchOutput(rejected, lines, alerts, anomalies, [], [], accepted, held, values)

    def aggregate(self, out: BatchOutput) -> BatchOutput:
        """Step 2: windowed aggregates of the accepted samples, and the events now releasable
        (``tokens[i]`` of a sample is held until every window containing it has closed).
        ``out`` is :meth:`detect`'s, which resumed every host it accepted a sample of."""
        aggregates: list[Aggregate] = []
        aggregators, gate = self.aggregators, self.gate
        for sample, token, values in zip(out.accepted, out.held, out.values, strict=True):
            for aggregator in aggregators:
                aggregator.add(sample, values)  # complete windows wait for close_due
            gate.hold(sample.host_id, sample.ts_ns, token)
        # The hosts whose deadline came (close_spreads_s), then the silent ones. Silence
        # is by the wall clock: a partition read behind another is not a silent one.
        now_ns = time.time_ns() if self.clock is None else self.clock()
        last = self._idle_checked_ns
        find_idle = last is None or now_ns - last >= IDLE_CHECK_NS
        if find_idle:
            self._idle_checked_ns = now_ns
        for aggregator in aggregators:
            aggregates += aggregator.close_due(now_ns)
            if find_idle:
                aggregates += aggregator.close_idle_hosts(self.idle_s, now_ns)
        # Fleet roll-ups need every partition: the roll-up stage (streams/rollups.py) builds
        # them from every worker's host windows (these aggregators make none).
        out.aggregates = aggregates
        aggregate_line = self.aggregate_format.line
        out.lines += [aggregate_line(a) for a in out.aggregates]
        # Only hosts that sent samples or had windows closed can release anything.
        touched = {s.host_id for s in out.accepted}
        touched.update(a.key for a in aggregates if a.scope == "host")
        out.releasable = gate.releasable(touched)
        return out
