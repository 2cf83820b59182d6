"""The on-disk sample buffer: FIFO order, commit only after acknowledgement, restarts, torn
tails, the bound (oldest segment dropped and counted) and any interleaving of the above."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelpilot.collectors.disk_buffer import DiskBuffer, DiskBufferError, Record, frame

KEY = b"host-a"


def _fill(buf: DiskBuffer, start: int, n: int, size: int = 40) -> None:
    for i in range(start, start + n):
        buf.append(KEY, str(i).encode().ljust(size, b"."), 1_000 + i)


def _values(records: list[Record]) -> list[int]:
    return [int(r.value.rstrip(b".")) for r in records]


def _drain(buf: DiskBuffer, batch: int = 7) -> list[int]:
    out: list[int] = []
    while True:
        recs = buf.peek(max_records=batch)
        if not recs:
            return out
        out += _values(recs)
        buf.commit(len(recs))


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_append_peek_commit_in_order(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert buf.depth == 0 and buf.oldest_ts_ns is None and buf.peek() == []
        _fill(buf, 0, 10)
        assert buf.depth == 10
        assert buf.oldest_ts_ns == 1_000
        first = buf.peek(max_records=4)
        assert _values(first) == [0, 1, 2, 3]
        assert first[0].key == KEY and first[0].ts_ns == 1_000
        assert _values(buf.peek(max_records=4)) == [0, 1, 2, 3]  # peek does not consume
        buf.commit(3)
        assert buf.depth == 7 and buf.oldest_ts_ns == 1_003
        assert _drain(buf) == list(range(3, 10))
        assert buf.depth == 0 and buf.oldest_ts_ns is None


def test_commit_more_than_peeked_is_refused(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        _fill(buf, 0, 3)
        buf.peek(max_records=2)
        with pytest.raises(ValueError, match="last peek returned 2"):
            buf.commit(3)


def test_peek_respects_byte_budget_but_returns_at_least_one(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        buf.append(KEY, b"x" * 5000, 1)
        _fill(buf, 0, 20)
        big = buf.peek(max_bytes=100)
        assert len(big) == 1 and big[0].value == b"x" * 5000
        buf.commit(1)
        some = buf.peek(max_bytes=200)
        assert 1 <= len(some) <= 4
        assert _values(some) == list(range(len(some)))


def test_records_span_segments_in_order(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=512) as buf:
        _fill(buf, 0, 100)
        assert len(_segments(tmp_path)) > 5
        assert _values(buf.peek(max_records=1000, max_bytes=1 << 20)) == list(range(100))
        assert _drain(buf, batch=9) == list(range(100))
        # Consumed segments are deleted; only the one being written may stay.
        assert len(_segments(tmp_path)) <= 1


def test_restart_keeps_depth_and_order(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=1024)
    _fill(buf, 0, 50)
    buf.peek(max_records=12)
    buf.commit(12)
    buf.close()
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=1024)
    assert buf.depth == 38
    assert buf.oldest_ts_ns == 1_012
    _fill(buf, 50, 5)
    assert _drain(buf) == list(range(12, 55))
    buf.close()
    with DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=1024) as buf:
        assert buf.depth == 0 and _drain(buf) == []
        _fill(buf, 55, 2)
        assert _drain(buf) == [55, 56]


def test_uncommitted_peek_is_replayed_after_restart(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        _fill(buf, 0, 5)
        buf.peek()  # sent, never acknowledged: the process dies here
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert _drain(buf) == [0, 1, 2, 3, 4]


def test_second_open_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20), pytest.raises(DiskBufferError, match="in use"):
        DiskBuffer(tmp_path, max_bytes=1 << 20)
    DiskBuffer(tmp_path, max_bytes=1 << 20).close()  # free again after close


def test_torn_tail_is_truncated_on_open(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        _fill(buf, 0, 10)
    (seg,) = _segments(tmp_path)
    whole = seg.stat().st_size
    one = len(frame(KEY, b"0".ljust(40, b"."), 0))
    os.truncate(seg, whole - one // 2)  # the last write was cut in the middle
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert buf.depth == 9
        assert seg.stat().st_size == whole - one
        _fill(buf, 100, 1)  # appends continue after the last whole record
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert _drain(buf) == [*range(9), 100]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 3,  # shorter than a header
        b"\xff\xff\xff\x7f" + b"\x00" * 20,  # a header announcing 2 GiB
        frame(KEY, b"ok", 5)[:-1] + b"X",  # a whole-length frame whose CRC fails
        os.urandom(200),
    ],
)
def test_garbage_after_the_last_record_is_dropped(tmp_path: Path, garbage: bytes) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        _fill(buf, 0, 4)
    (seg,) = _segments(tmp_path)
    clean = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(garbage)
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert seg.stat().st_size == clean
        assert _drain(buf) == [0, 1, 2, 3]


def test_corruption_in_a_sealed_segment_loses_only_that_segments_rest(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=512) as buf:
        _fill(buf, 0, 40)
    first = _segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    one = len(frame(KEY, b"0".ljust(40, b"."), 0))
    data[one * 2 + 15] ^= 0xFF  # flip a byte inside the third record
    first.write_bytes(bytes(data))
    with DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=512) as buf:
        got = _drain(buf)
    per_segment = 512 // one
    assert got == [0, 1, *range(per_segment, 40)]


def test_damage_after_open_is_discarded_and_counted(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=512) as buf:
        _fill(buf, 0, 30)
        first = _segments(tmp_path)[0]
        data = bytearray(first.read_bytes())
        one = len(frame(KEY, b"0".ljust(40, b"."), 0))
        data[one + 15] ^= 0xFF  # the second record rots while the buffer is open
        with first.open("r+b") as f:
            f.write(bytes(data))
        got = _drain(buf)
        per_segment = 512 // one
        assert got == [0, *range(per_segment, 30)]
        assert buf.dropped_total == per_segment - 1
        assert buf.depth == 0


def test_unreadable_cursor_replays_everything(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        _fill(buf, 0, 5)
        buf.peek(max_records=2)
        buf.commit(2)
    (tmp_path / "cursor.json").write_text("{not json")
    with DiskBuffer(tmp_path, max_bytes=1 << 20) as buf:
        assert _drain(buf) == [0, 1, 2, 3, 4]  # at least once, never lost


def test_bound_drops_the_oldest_segment_and_counts(tmp_path: Path) -> None:
    one = len(frame(KEY, b"0".ljust(40, b"."), 0))
    max_bytes, seg_bytes = 4096, 1024
    per_segment = seg_bytes // one
    with DiskBuffer(tmp_path, max_bytes=max_bytes, segment_bytes=seg_bytes) as buf:
        n = 300
        _fill(buf, 0, n)
        assert buf.bytes <= max_bytes
        assert buf.dropped_total > 0
        assert buf.depth + buf.dropped_total == n
        assert buf.dropped_total % per_segment == 0  # whole segments only
        got = _drain(buf, batch=50)
        # The newest records all survive; the survivors are a contiguous tail.
        assert got == list(range(n - len(got), n))
        assert len(got) >= (max_bytes - seg_bytes) // one
        dropped = buf.dropped_total
    state = json.loads((tmp_path / "cursor.json").read_text())
    assert state["dropped_total"] == dropped
    with DiskBuffer(tmp_path, max_bytes=max_bytes, segment_bytes=seg_bytes) as buf:
        assert buf.dropped_total == dropped  # persisted


def test_drop_while_a_peek_is_in_flight_never_skips_newer_records(tmp_path: Path) -> None:
    one = len(frame(KEY, b"0".ljust(40, b"."), 0))
    with DiskBuffer(tmp_path, max_bytes=4096, segment_bytes=1024) as buf:
        _fill(buf, 0, 10)
        in_flight = buf.peek(max_records=5)  # the sender is waiting on these
        _fill(buf, 10, 4096 // one + 10)  # meanwhile the bound drops their segment
        assert buf.dropped_total > 0
        buf.commit(len(in_flight))  # the late acknowledgement must not move past newer ones
        rest = _drain(buf)
        total = 10 + 4096 // one + 10
        assert rest == list(range(total - len(rest), total))
        assert buf.depth == 0


def test_a_record_larger_than_a_segment_is_refused(tmp_path: Path) -> None:
    with DiskBuffer(tmp_path, max_bytes=8192, segment_bytes=1024) as buf:
        with pytest.raises(ValueError, match="larger than a segment"):
            buf.append(KEY, b"x" * 2000, 1)
        assert buf.depth == 0


def test_concurrent_appender_and_reader_keep_fifo(tmp_path: Path) -> None:
    n = 3000
    with DiskBuffer(tmp_path, max_bytes=1 << 22, segment_bytes=16 * 1024) as buf:

        def writer() -> None:
            _fill(buf, 0, n)

        t = threading.Thread(target=writer)
        t.start()
        got: list[int] = []
        while len(got) < n:
            recs = buf.peek(max_records=64)
            got += _values(recs)
            buf.commit(len(recs))
        t.join()
        assert got == list(range(n))
        assert buf.depth == 0


# -- any interleaving ---------------------------------------------------------------------------
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 30), st.integers(0, 120)),
        st.tuples(st.just("commit"), st.integers(0, 40), st.integers(0, 0)),
        st.tuples(st.just("restart"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("tear"), st.integers(1, 30), st.integers(0, 0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, bounded=st.booleans())
def test_any_interleaving_preserves_fifo_of_non_dropped_records(
    ops: list[tuple[str, int, int]], bounded: bool
) -> None:
    max_bytes, seg_bytes = (4096, 512) if bounded else (1 << 22, 512)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        buf = DiskBuffer(path, max_bytes=max_bytes, segment_bytes=seg_bytes)
        appended = 0
        delivered: list[int] = []
        try:
            for op, a, b in ops:
                if op == "append":
                    for _ in range(a):
                        buf.append(KEY, str(appended).encode().ljust(8 + b, b"."), appended)
                        appended += 1
                elif op == "commit":
                    recs = buf.peek(max_records=max(a, 1))
                    k = min(a, len(recs))
                    delivered += _values(recs[:k])
                    buf.commit(k)
                elif op in ("restart", "tear"):
                    buf.close()
                    if op == "tear" and _segments(path):
                        with _segments(path)[-1].open("ab") as f:
                            f.write(b"\x01" * a)  # a crash mid-write leaves a partial frame
                    buf = DiskBuffer(path, max_bytes=max_bytes, segment_bytes=seg_bytes)
                assert buf.depth + len(delivered) + buf.dropped_total == appended
            rest = _drain(buf)
        finally:
            buf.close()
    everything = delivered + rest
    assert everything == sorted(set(everything))  # FIFO, exactly once
    assert len(everything) + buf.dropped_total == appended
    if not bounded:
        assert everything == list(range(appended))
    elif rest:
        # Whatever the bound dropped, the newest records are never the ones lost.
        assert rest[-1] == appended - 1
