"""When may the worker acknowledge a sample? When every aggregate window containing it is closed.

The aggregates' in-memory state is then never the only copy of a sample's contribution: until
its windows are written, the sample's offset is not committed, so a worker that dies (or loses
the partition) leaves those samples to be read again, and the windows are rebuilt from the log
and written once (InfluxDB points are keyed by window start: rewrites are idempotent). A
window already written (the partition's offset is one number for several hosts, so a replay can
start inside it) is not rebuilt: streams/host_state.py records it per host. The Kafka
log is the aggregation state; the commit lags by at most one window plus the allowed lateness.

Known approximation: after such a replay, the first rebuilt window of a host lacks the energy
of the part of the tick before its first sample (the previous sample is no longer in memory).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from accelpilot.streams.aggregates import WindowAggregator


class AckGate:
    """Holds each host's events until all aggregators have closed the windows they fall in."""

    def __init__(self, aggregators: Sequence[WindowAggregator]) -> None:
        self.aggregators = list(aggregators)
        self._pending: dict[str, deque[tuple[int, Any]]] = {}

    def hold(self, host_id: str, ts_ns: int, event: Any) -> None:
        self._pending.setdefault(host_id, deque()).append((ts_ns, event))

    def releasable(self, hosts: Iterable[str] | None = None) -> list[Any]:
        """Events whose windows have all closed, in arrival order per host.

        ``hosts``: only these may have closed windows since the last call (the hosts of the
        samples added and of the windows closed since then); None checks every host.

        A sample at ``ts`` is in a closed window of an aggregator with window ``w`` whose
        windows are closed up to ``c`` iff ``(ts // w + 1) * w <= c``, i.e. ``ts < (c // w) * w``:
        one bound per host, the smallest over the aggregators, compared with the queue's head.
        """
        out: list[Any] = []
        pending = self._pending
        candidates = pending.items() if hosts is None else ((h, pending.get(h)) for h in hosts)
        for host_id, queue in candidates:
            if not queue:
                continue
            bound: int | None = None
            for a in self.aggregators:
                c = a.closed_until_ns(host_id)
                if c is None:
                    break
                b = (c // a.window_ns) * a.window_ns
                bound = b if bound is None or b < bound else bound
            else:
                if bound is None:
                    continue
                while queue and queue[0][0] < bound:
                    out.append(queue.popleft()[1])
        return out

    @property
    def held(self) -> int:
        return sum(len(q) for q in self._pending.values())
