"""Durable per-host state: the windows of each host already written to InfluxDB.

Why: a sample is acked only once every window containing it is written (streams/acks.py), but a
partition's committed offset is one number for all of its hosts. When two hosts share a
partition and one lags the other, the committed offset can sit inside a window of the leading
host that was already written. A worker restarted then (or taking the partition over) reads that
host's later samples again; without a record it would rebuild the written window from them
alone and overwrite the complete one in InfluxDB (tests/service/test_worker_restarts.py).

The record, per host and window size, is the end of the last window written (``written_ns``).
A replayed sample whose window ends at or before it is dropped by the aggregator: its
contribution is already in InfluxDB. The worker keeps the records in a faust ``Table`` keyed by
host id, written to its compacted changelog on the partition of the host's samples (so a
record moves with its host's partition and is recovered before that partition is read again),
once per batch per host whose windows were written, after the InfluxDB write and before the
batch's events are acked.

Pure part here (encode/decode, merging); the faust glue is in streams/app.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from accelpilot.schemas.aggregates import Aggregate


class HostRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a host's new owner needs: per window size (seconds, as text: msgpack map keys),
    the end (ns) of the last window written to InfluxDB."""

    v: int = 1
    written_ns: dict[str, int] = {}
    #: The worker's detection state of this host (``DeviceMonitor.host_state``: open alert
    #: episodes, failure-risk state; empty: none saved) and the newest sample time detection
    #: had seen when it was taken: the host's next owner restores it and does not run
    #: detection again on replayed samples up to that time, so an open episode goes on under
    #: its id.
    detection: bytes = b""
    observed_ns: int = 0

    def written_until_ns(self, window_s: float) -> int | None:
        return self.written_ns.get(window_key(window_s))


def window_key(window_s: float) -> str:
    return repr(float(window_s))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(HostRecord)


def encode_record(record: HostRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> HostRecord:
    return _decoder.decode(data)


def written_windows(aggregates: Iterable[Aggregate]) -> dict[str, dict[str, int]]:
    """Per host, per window size: the end of the latest host window among ``aggregates``."""
    out: dict[str, dict[str, int]] = {}
    for a in aggregates:
        if a.scope == "host":
            _advance(out.setdefault(a.key, {}), window_key(a.window_s), a.window_end_ns)
    return out


def merged_written(writtens: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Several batches' :func:`written_windows` as one (the latest end wins)."""
    out: dict[str, dict[str, int]] = {}
    for written in writtens:
        for host_id, ends in written.items():
            mine = out.setdefault(host_id, {})
            for k, end in ends.items():
                _advance(mine, k, end)
    return out


def _advance(ends: dict[str, int], key: str, end: int) -> bool:
    if end > ends.get(key, -1):
        ends[key] = end
        return True
    return False


def merged(
    old: HostRecord | None,
    ends: dict[str, int],
    detection: bytes | None = None,
    observed_ns: int | None = None,
) -> HostRecord | None:
    """``old`` advanced to ``ends`` (never moved back), with the detection state when given;
    None when nothing changes."""
    base = {} if old is None else old.written_ns
    new = dict(base)
    moved = any([_advance(new, k, end) for k, end in ends.items()])
    old_det, old_observed = (b"", 0) if old is None else (old.detection, old.observed_ns)
    detection = old_det if detection is None else detection
    observed = old_observed if observed_ns is None else max(observed_ns, old_observed)
    if not moved and (detection, observed) == (old_det, old_observed):
        return None
    return HostRecord(written_ns=new, detection=detection, observed_ns=observed)
