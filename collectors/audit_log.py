"""An append-only, hash-chained JSONL log of every decision a host's actuator makes.

Each line is the canonical JSON (compact, keys sorted) of one entry::

    {ts_ns, action_id, host_id, device_id, kind, outcome, reason,
     previous_cap_w, new_cap_w, prev_hash, hash}

where ``hash = sha256(prev_hash + canonical JSON of the entry without "hash")`` (hex) and the
first entry's ``prev_hash`` is :data:`GENESIS_HASH` (64 zeros). Editing a line breaks its own
hash; deleting or reordering lines breaks the next line's ``prev_hash``; :func:`verify` reports
the first line where the chain breaks. Deleting lines from the *end* leaves a valid, shorter
chain: detect that with an anchor kept elsewhere (``must_contain_hash``, e.g. the last
``audit_hash`` the host published on ``fleet.action-results``).

Durability: every append is one ``write`` on an ``O_APPEND`` descriptor followed by
``fdatasync``, so an entry that :meth:`AuditLog.append` returned is on disk. That costs one disk
flush per decision (roughly 0.05-10 ms depending on the disk); actions arrive at most a few
times a second per host, so the cost is noise next to the action itself, and an actuator must
not act on a decision it could not durably record. One process writes a log at a time (an
exclusive ``flock``); a restarted process continues the chain from the last line's hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, get_args

import msgspec

from accelpilot.errors import AuditLogError
from accelpilot.schemas.action_results import Outcome

GENESIS_HASH = "0" * 64
ENTRY_FIELDS = frozenset(
    {
        "ts_ns",
        "action_id",
        "host_id",
        "device_id",
        "kind",
        "outcome",
        "reason",
        "previous_cap_w",
        "new_cap_w",
        "prev_hash",
        "hash",
    }
)
_OUTCOMES = frozenset(get_args(Outcome))
_TAIL_CHUNK_BYTES = 4096

_encoder = msgspec.json.Encoder(order="sorted")


class VerifyResult(NamedTuple):
    ok: bool
    first_bad_line: int | None  # 1-based; len(lines) + 1 when an anchor hash is missing


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 hex of ``prev_hash`` + the canonical JSON of ``entry`` without ``hash``."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(entry["prev_hash"].encode("ascii") + _encoder.encode(body)).hexdigest()


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """The entry on ``line`` if it is intact (canonical, complete, self-consistent), else None."""
    if not line.endswith(b"\n"):
        return None  # a torn (partially written) last line
    try:
        entry = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(entry, dict) or entry.keys() != ENTRY_FIELDS:
        return None
    if not isinstance(entry["prev_hash"], str) or not entry["prev_hash"].isascii():
        return None
    if _encoder.encode(entry) + b"\n" != line:
        return None  # any byte-level change, even one that parses the same
    if entry["hash"] != entry_hash(entry):
        return None
    return entry


def verify(path: str | Path, must_contain_hash: str | None = None) -> VerifyResult:
    """Check the whole chain; ``(True, None)`` when intact, else the first bad line (1-based).

    With ``must_contain_hash``, an entry with that hash must be present (detects truncation
    back past a hash known from elsewhere); if it is not, the bad line is one past the end.
    """
    prev_hash = GENESIS_HASH
    seen_anchor = must_contain_hash is None
    line_no = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            entry = _parse_line(line)
            if entry is None or entry["prev_hash"] != prev_hash:
                return VerifyResult(False, line_no)
            prev_hash = entry["hash"]
            seen_anchor = seen_anchor or prev_hash == must_contain_hash
    if not seen_anchor:
        return VerifyResult(False, line_no + 1)
    return VerifyResult(True, None)


def _last_line(fd: int) -> bytes:
    """The file's last line (with its newline, if it has one); b"" for an empty file."""
    end = os.lseek(fd, 0, os.SEEK_END)
    buf = b""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK_BYTES)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0:
            return buf[cut + 1 :]
    return buf


class AuditLog:
    """Appends decisions to a hash-chained JSONL file; ``clock_ns`` stamps entries (ns)."""

    def __init__(self, path: str | Path, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = Path(path)
        self._clock_ns = clock_ns
        created = not self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise AuditLogError(f"cannot open audit log {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if created:
                _fsync_dir(self.path.parent)
            self._last_hash = self._read_last_hash()
        except BlockingIOError as e:
            os.close(self._fd)
            raise AuditLogError(f"audit log {self.path} is open in another process") from e
        except BaseException:
            os.close(self._fd)
            raise
        self._broken = False

    def _read_last_hash(self) -> str:
        line = _last_line(self._fd)
        if not line:
            return GENESIS_HASH
        entry = _parse_line(line)
        if entry is None:
            raise AuditLogError(
                f"the last line of audit log {self.path} is torn or altered; run "
                "accelpilot.collectors.audit_log.verify on it and have an operator decide "
                "(move it aside to start a new chain)"
            )
        return str(entry["hash"])

    @property
    def last_hash(self) -> str:
        return self._last_hash

    def append(
        self,
        *,
        action_id: str,
        host_id: str,
        kind: str,
        outcome: str,
        device_id: str | None = None,
        reason: str = "",
        previous_cap_w: float | None = None,
        new_cap_w: float | None = None,
        ts_ns: int | None = None,
    ) -> str:
        """Durably record one decision; returns its hash (for ``ActionResult.audit_hash``)."""
        if self._broken:
            raise AuditLogError(f"audit log {self.path} failed earlier; reopen it to go on")
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {sorted(_OUTCOMES)}")
        entry: dict[str, Any] = {
            "ts_ns": self._clock_ns() if ts_ns is None else ts_ns,
            "action_id": action_id,
            "host_id": host_id,
            "device_id": device_id,
            "kind": kind,
            "outcome": outcome,
            "reason": reason,
            "previous_cap_w": previous_cap_w,
            "new_cap_w": new_cap_w,
            "prev_hash": self._last_hash,
        }
        entry["hash"] = entry_hash(entry)
        line = _encoder.encode(entry) + b"\n"
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
            os.fdatasync(self._fd)
        except OSError as e:
            self._broken = True  # the file may now end in a torn line: stop here, fail closed
            raise AuditLogError(f"cannot append to audit log {self.path}: {e}") from e
        self._last_hash = entry["hash"]
        return self._last_hash

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
