"""A bounded on-disk FIFO of records: where samples wait, in order, while the broker is away.

Layout of ``dir`` (give the buffer a folder of its own)::

    0000000000000001.seg ...  append-only segment files, oldest first
    cursor.json               read cursor (segment, offset) and dropped_total; replaced atomically
    .lock                     flock: one process per buffer

Each record is framed as ``<u32 payload length><u32 crc32(payload)>`` followed by the payload
``<i64 ts_ns><u32 key length> key value``. Opening the buffer checks every frame: a torn or
corrupt tail (a crash in the middle of a write, garbage after it) is truncated away with a
warning, never returned and never fatal.

The reader peeks from the cursor and commits only what Kafka acknowledged, so a crash between
send and commit re-sends (at least once). When an append would take the buffer over
``max_bytes``, whole segments are dropped, OLDEST first, and their unsent records are counted in
the persisted ``dropped_total``; the newest samples are always kept.

Durability: an append is one ``os.write`` of the whole frame (no user-space buffer), so a
record survives the process crashing or being killed the moment ``append`` returns. It survives
power loss or a kernel crash only with ``fsync=True`` (one fsync per append and per cursor
commit: far slower on most disks).

Thread-safety: one thread may append while another peeks and commits (the agent's sampling
thread and the publisher's sender thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from accelpilot.errors import DiskBufferError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_FIXED = struct.Struct("<qI")  # ts_ns, key length
_FRAME_OVERHEAD = _HEADER.size + _FIXED.size
_SUFFIX = ".seg"
_CURSOR = "cursor.json"
_MIB = 1 << 20


class Record(NamedTuple):
    """One buffered record; ``segment``/``offset`` say where it sits in the log."""

    key: bytes
    value: bytes
    ts_ns: int
    segment: int = -1
    offset: int = -1

    @property
    def position(self) -> tuple[int, int]:
        return (self.segment, self.offset)

    @property
    def end(self) -> tuple[int, int]:
        """The position just after this record."""
        return (self.segment, self.offset + _FRAME_OVERHEAD + len(self.key) + len(self.value))


@dataclass
class _Segment:
    index: int
    path: Path
    size: int = 0  # bytes of whole, valid frames
    records: int = 0
    read_fd: int | None = None


def frame(key: bytes, value: bytes, ts_ns: int) -> bytes:
    """The on-disk bytes of one record."""
    payload = _FIXED.pack(ts_ns, len(key)) + key + value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _parse(data: bytes | memoryview, base: int, segment: int) -> Iterator[Record | int]:
    """Yield the records in ``data`` (which starts at file offset ``base``); after the last
    whole, valid frame yield the offset where the valid part ends (an int)."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(view, pos)
        stop = pos + _HEADER.size + length
        if length < _FIXED.size or stop > end:
            break
        payload = view[pos + _HEADER.size : stop]
        if zlib.crc32(payload) != crc:
            break
        ts_ns, key_len = _FIXED.unpack_from(payload)
        if _FIXED.size + key_len > length:
            break
        key = bytes(payload[_FIXED.size : _FIXED.size + key_len])
        value = bytes(payload[_FIXED.size + key_len :])
        yield Record(key, value, ts_ns, segment, base + pos)
        pos = stop
    yield base + pos


class DiskBuffer:
    """Append-only, segmented, bounded record log with a persisted read cursor.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, DiskBuffer(Path(d), max_bytes=1 << 20) as buf:
    ...     buf.append(b"host-a", b"payload", 1)
    ...     [r.value for r in buf.peek()], buf.depth
    ...     buf.commit(1)
    ...     buf.depth
    ([b'payload'], 1)
    0
    """

    def __init__(
        self,
        dir: Path,
        max_bytes: int,
        segment_bytes: int = 4 * _MIB,
        *,
        fsync: bool = False,
    ) -> None:
        if max_bytes < 4096:
            raise ValueError(f"max_bytes={max_bytes}: a disk buffer needs at least 4096 bytes")
        if segment_bytes < 256:
            raise ValueError(f"segment_bytes={segment_bytes}: use at least 256 bytes")
        self.dir = Path(dir)
        self.max_bytes = max_bytes
        # At least four segments fit the bound, so dropping the oldest always makes room and the
        # segment being written (the newest samples) is never the one dropped.
        self.segment_bytes = min(segment_bytes, max_bytes // 4)
        self.fsync = fsync
        self._lock = threading.Lock()  # in-memory state and the segment files
        self._cursor_lock = threading.Lock()  # serializes cursor.json writes (taken first)
        self._segments: list[_Segment] = []
        self._append_fd: int | None = None
        self._cur_seg = 0
        self._cur_off = 0
        self._cur_rec = 0  # records of the cursor's segment before the cursor
        self._depth = 0
        self._bytes = 0
        self._dropped_total = 0
        self._oldest_ts: int | None = None
        self._oldest_known = False
        self._last_peek: list[Record] = []
        self._lock_fd: int | None = None
        self._closed = False
        self._open()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DiskBufferError(f"cannot open the disk buffer at {self.dir}: {e}") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DiskBufferError(
                f"the disk buffer at {self.dir} is in use by another process (or another "
                "DiskBuffer in this one); stop it or give this one its own folder"
            ) from e
        (self.dir / (_CURSOR + ".tmp")).unlink(missing_ok=True)
        seg_no, offset, self._dropped_total = self._read_cursor()
        for path in sorted(self.dir.glob("*" + _SUFFIX)):
            try:
                index = int(path.name[: -len(_SUFFIX)])
            except ValueError:
                continue
            self._segments.append(self._recover(index, path))
        self._place_cursor(seg_no, offset)
        self._bytes = sum(s.size for s in self._segments)

    def _read_cursor(self) -> tuple[int, int, int]:
        path = self.dir / _CURSOR
        try:
            raw = json.loads(path.read_text())
            return int(raw["segment"]), int(raw["offset"]), int(raw["dropped_total"])
        except FileNotFoundError:
            return 0, 0, 0
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Written atomically, so this means outside damage: replay everything still on disk
            # (at least once) rather than lose it.
            log.warning("disk buffer cursor %s unreadable (%s); replaying from the start", path, e)
            return 0, 0, 0

    def _recover(self, index: int, path: Path) -> _Segment:
        """Check every frame of a segment; truncate a torn or corrupt tail."""
        data = path.read_bytes()
        seg = _Segment(index, path)
        for item in _parse(data, 0, index):
            if isinstance(item, int):
                seg.size = item
            else:
                seg.records += 1
        if seg.size < len(data):
            log.warning(
                "disk buffer segment %s: %d bytes after the last whole record (a torn write or "
                "corruption) truncated",
                path,
                len(data) - seg.size,
            )
            os.truncate(path, seg.size)
        return seg

    def _place_cursor(self, seg_no: int, offset: int) -> None:
        segs = self._segments
        # Segments wholly before the cursor were consumed; a crash between commit and unlink
        # can leave them behind.
        while segs and segs[0].index < seg_no:
            segs.pop(0).path.unlink(missing_ok=True)
        if not segs:
            self._cur_seg, self._cur_off, self._cur_rec = seg_no, 0, 0
            return
        first = segs[0]
        if first.index > seg_no:  # the cursor's segment is gone (dropped): start at the oldest
            offset = 0
        self._cur_seg, self._cur_off, self._cur_rec = first.index, 0, 0
        if offset > 0:
            # Walk to the first record boundary at or after the committed offset.
            for item in _parse(first.path.read_bytes()[: first.size], 0, first.index):
                if isinstance(item, int):
                    self._cur_off = item
                    break
                if item.offset >= offset:
                    self._cur_off = item.offset
                    break
                self._cur_rec += 1
        self._depth = sum(s.records for s in segs) - self._cur_rec
        self._normalize_cursor()

    # -- appending ----------------------------------------------------------------------------
    def append(self, key: bytes, value: bytes, ts_ns: int) -> None:
        """Add one record at the end (one ``os.write``; no network, no fsync unless asked)."""
        data = frame(key, value, ts_ns)
        if len(data) > self.segment_bytes:
            raise ValueError(
                f"record of {len(data)} bytes is larger than a segment ({self.segment_bytes} "
                "bytes); raise segment_bytes/max_bytes or send smaller samples"
            )
        with self._lock:
            self._check_open()
            dropped = self._make_room(len(data))
            fd = self._writable_segment(len(data))
            seg = self._segments[-1]
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError as e:
                # Leave no partial frame behind: later appends would land after garbage.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, seg.size)
                raise DiskBufferError(f"cannot write to the disk buffer at {self.dir}: {e}") from e
            seg.size += len(data)
            seg.records += 1
            self._bytes += len(data)
            self._depth += 1
            if self._depth == 1:
                self._oldest_ts, self._oldest_known = ts_ns, True
        if dropped:
            self._write_cursor()

    def _writable_segment(self, n: int) -> int:
        segs = self._segments
        if self._append_fd is not None and segs and segs[-1].size + n <= self.segment_bytes:
            return self._append_fd
        if segs and self._append_fd is None and segs[-1].size + n <= self.segment_bytes:
            self._append_fd = self._open_append(segs[-1].path)  # reopen after a restart
            return self._append_fd
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None
        # Never reuse a number: a persisted cursor may still name an old segment.
        index = segs[-1].index + 1 if segs else self._cur_seg + 1
        seg = _Segment(index, self.dir / f"{index:016d}{_SUFFIX}")
        self._append_fd = self._open_append(seg.path)
        if self.fsync:
            self._fsync_dir()
        segs.append(seg)
        if len(segs) == 1:
            self._cur_seg, self._cur_off, self._cur_rec = index, 0, 0
        self._normalize_cursor()
        return self._append_fd

    def _open_append(self, path: Path) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise DiskBufferError(f"cannot open disk buffer segment {path}: {e}") from e

    def _make_room(self, n: int) -> int:
        """Drop the oldest segments until ``n`` more bytes fit; the number of records lost."""
        lost = 0
        while self._bytes + n > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.pop(0)
            if seg.index == self._cur_seg:
                gone = seg.records - self._cur_rec
                nxt = self._segments[0]
                self._cur_seg, self._cur_off, self._cur_rec = nxt.index, 0, 0
                self._oldest_known = False
            else:  # wholly consumed already (normally unlinked at commit)
                gone = 0
            lost += gone
            self._depth -= gone
            self._bytes -= seg.size
            self._close_reader(seg)
            seg.path.unlink(missing_ok=True)
        if lost:
            self._dropped_total += lost
            log.warning(
                "disk buffer full (%d bytes): dropped the oldest %d unsent records",
                self.max_bytes,
                lost,
            )
        return lost

    # -- reading ------------------------------------------------------------------------------
    def peek(self, max_records: int = 500, max_bytes: int = 512 * 1024) -> list[Record]:
        """Up to ``max_records`` records (about ``max_bytes``, always at least one) from the
        cursor, in order, without consuming them; ``commit`` consumes a prefix of this list."""
        chunks: list[tuple[bytes, int, int, bool]] = []  # data, offset, segment, whole rest?
        with self._lock:
            self._check_open()
            budget = max_bytes
            for seg in self._segments:
                if seg.index < self._cur_seg:
                    continue
                start = self._cur_off if seg.index == self._cur_seg else 0
                if start >= seg.size:
                    continue
                fd = self._reader(seg)
                want = min(seg.size - start, budget)
                if not chunks:  # the first record comes back whatever its size
                    length = _HEADER.unpack(os.pread(fd, _HEADER.size, start))[0]
                    want = max(want, min(seg.size - start, _HEADER.size + length))
                data = os.pread(fd, want, start)
                chunks.append((data, start, seg.index, start + len(data) == seg.size))
                budget -= len(data)
                if budget <= 0:
                    break
        records: list[Record] = []
        for data, start, seg_no, whole in chunks:
            end = start
            for item in _parse(data, start, seg_no):
                if isinstance(item, int):
                    end = item
                    break
                records.append(item)
                if len(records) >= max_records:
                    break
            if len(records) >= max_records:
                break
            if end < start + len(data):
                # A frame cut by the byte budget is normal; a bad frame is damage after open.
                if whole or self._is_corrupt(seg_no, end):
                    self._discard_corrupt_tail(seg_no, end)
                break
        with self._lock:
            self._last_peek = records
        return records

    def _is_corrupt(self, seg_no: int, offset: int) -> bool:
        with self._lock:
            seg = self._segment(seg_no)
            if seg is None or offset >= seg.size:
                return False
            fd = self._reader(seg)
            head = os.pread(fd, _HEADER.size, offset)
            if len(head) < _HEADER.size:
                return True
            length = _HEADER.unpack(head)[0]
            if offset + _HEADER.size + length > seg.size or length < _FIXED.size:
                return True
            data = os.pread(fd, _HEADER.size + length, offset)
            return not any(isinstance(r, Record) for r in _parse(data, offset, seg_no))

    def _discard_corrupt_tail(self, seg_no: int, offset: int) -> None:
        """A frame went bad after the buffer was opened (disk damage): drop the rest of that
        segment, count what is lost, and carry on."""
        with self._lock:
            seg = self._segment(seg_no)
            if seg is None:
                return
            data = os.pread(self._reader(seg), offset, 0)
            kept = sum(1 for r in _parse(data, 0, seg_no) if isinstance(r, Record))
            lost = seg.records - kept
            log.error(
                "disk buffer segment %s is corrupt at byte %d: %d records lost",
                seg.path,
                offset,
                lost,
            )
            os.truncate(seg.path, offset)
            self._bytes -= seg.size - offset
            seg.size, seg.records = offset, kept
            self._depth -= lost
            self._dropped_total += lost
            self._oldest_known = False
            self._normalize_cursor()
        self._write_cursor()

    def commit(self, n_records: int) -> None:
        """Consume the first ``n_records`` of the last ``peek`` (they were acknowledged).

        Records of that peek that were dropped meanwhile (the bound was hit) are not counted
        twice: the cursor only ever moves forward.
        """
        if n_records <= 0:
            return
        with self._lock:
            self._check_open()
            peeked = self._last_peek
            if n_records > len(peeked):
                raise ValueError(f"commit({n_records}) but the last peek returned {len(peeked)}")
            done, self._last_peek = peeked[:n_records], peeked[n_records:]
            cursor = (self._cur_seg, self._cur_off)
            target = done[-1].end
            if target <= cursor or self._segment(target[0]) is None:
                return  # all of them were dropped while in flight
            moved = sum(1 for r in done if r.position >= cursor)
            if target[0] == self._cur_seg:
                self._cur_rec += moved
            else:
                self._cur_rec = sum(1 for r in done if r.segment == target[0])
            self._cur_seg, self._cur_off = target
            self._depth -= moved
            self._oldest_known = False
            self._normalize_cursor()
        self._write_cursor()

    def _normalize_cursor(self) -> None:
        """Move a cursor sitting at the end of a sealed segment to the next one and delete the
        consumed segments (called with the lock held)."""
        while True:
            segs = self._segments
            while segs and segs[0].index < self._cur_seg:
                seg = segs.pop(0)
                self._bytes -= seg.size
                self._close_reader(seg)
                seg.path.unlink(missing_ok=True)
            if len(segs) > 1 and segs[0].index == self._cur_seg and self._cur_off >= segs[0].size:
                self._cur_seg, self._cur_off, self._cur_rec = segs[1].index, 0, 0
                continue
            return

    # -- state --------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Records after the cursor (not yet acknowledged)."""
        return self._depth

    @property
    def bytes(self) -> int:
        """Bytes of segment files on disk (including consumed records of the current one)."""
        return self._bytes

    @property
    def dropped_total(self) -> int:
        """Records ever dropped unsent because the bound was hit (persisted across restarts)."""
        return self._dropped_total

    @property
    def oldest_ts_ns(self) -> int | None:
        """``ts_ns`` of the oldest record not yet acknowledged, or None when empty."""
        with self._lock:
            if self._depth == 0:
                return None
            if not self._oldest_known:
                self._oldest_ts = self._read_ts_at_cursor()
                self._oldest_known = True
            return self._oldest_ts

    def _read_ts_at_cursor(self) -> int | None:
        seg = self._segment(self._cur_seg)
        if seg is None or self._cur_off >= seg.size:
            return None
        raw = os.pread(self._reader(seg), _FRAME_OVERHEAD, self._cur_off)
        return int(_FIXED.unpack_from(raw, _HEADER.size)[0])

    def _write_cursor(self) -> None:
        with self._cursor_lock:
            with self._lock:
                if self._closed:
                    return
                state = {
                    "v": 1,
                    "segment": self._cur_seg,
                    "offset": self._cur_off,
                    "dropped_total": self._dropped_total,
                }
            path = self.dir / _CURSOR
            tmp = self.dir / (_CURSOR + ".tmp")
            with tmp.open("w") as f:
                json.dump(state, f)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync:
                self._fsync_dir()

    # -- helpers ------------------------------------------------------------------------------
    def _segment(self, index: int) -> _Segment | None:
        for seg in self._segments:
            if seg.index == index:
                return seg
        return None

    def _reader(self, seg: _Segment) -> int:
        if seg.read_fd is None:
            seg.read_fd = os.open(seg.path, os.O_RDONLY)
        return seg.read_fd

    @staticmethod
    def _close_reader(seg: _Segment) -> None:
        if seg.read_fd is not None:
            os.close(seg.read_fd)
            seg.read_fd = None

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_open(self) -> None:
        if self._closed:
            raise DiskBufferError(f"the disk buffer at {self.dir} is closed")

    def close(self) -> None:
        """Close the files and release the folder; what is on disk stays for the next open."""
        with self._cursor_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            if self._append_fd is not None:
                os.close(self._append_fd)
                self._append_fd = None
            for seg in self._segments:
                self._close_reader(seg)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> DiskBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
