"""The hash-chained audit log: chaining, restarts, durability, and tamper detection."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accelpilot.collectors import audit_log
from accelpilot.collectors.audit_log import (
    GENESIS_HASH,
    AuditLog,
    AuditLogError,
    entry_hash,
    verify,
)

T0_NS = 1_700_000_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ns = T0_NS

    def __call__(self) -> int:
        self.now_ns += 1_000
        return self.now_ns


def decision(i: int) -> dict[str, Any]:
    return {
        "action_id": f"a-{i}",
        "host_id": "h1",
        "device_id": f"gpu{i % 2}",
        "kind": "set_power_cap",
        "outcome": "applied" if i % 3 else "rejected",
        "reason": "" if i % 3 else "expired",
        "previous_cap_w": 300.0,
        "new_cap_w": 250.0 + i if i % 3 else None,
    }


def write_log(path: Path, n: int) -> list[str]:
    with AuditLog(path, clock_ns=Clock()) as log:
        return [log.append(**decision(i)) for i in range(n)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_entries_are_chained_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = write_log(path, 3)
    entries = [json.loads(line) for line in lines(path)]
    assert [e["prev_hash"] for e in entries] == [GENESIS_HASH, *hashes[:2]]
    assert [e["hash"] for e in entries] == hashes
    assert all(entry_hash(e) == e["hash"] for e in entries)
    assert set(entries[0]) == audit_log.ENTRY_FIELDS
    assert entries[0]["ts_ns"] == T0_NS + 1_000
    assert entries[0]["outcome"] == "rejected" and entries[0]["new_cap_w"] is None
    assert verify(path) == (True, None)


def test_the_hash_is_sha256_of_prev_hash_and_canonical_body(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "audit.jsonl"
    write_log(path, 1)
    entry = json.loads(lines(path)[0])
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert entry["hash"] == hashlib.sha256(GENESIS_HASH.encode() + canonical).hexdigest()


def test_an_empty_or_new_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        assert log.last_hash == GENESIS_HASH
    assert path.exists() and verify(path) == (True, None)


def test_a_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_log(path, 2)
    with AuditLog(path, clock_ns=Clock()) as log:
        assert log.last_hash == first[-1]
        third = log.append(**decision(2), ts_ns=5)
    assert json.loads(lines(path)[2])["prev_hash"] == first[-1]
    assert json.loads(lines(path)[2])["ts_ns"] == 5
    assert verify(path) == (True, None)
    assert verify(path, must_contain_hash=third) == (True, None)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path), pytest.raises(AuditLogError, match="another process"):
        AuditLog(path)
    AuditLog(path).close()  # released on close


def test_every_append_is_flushed_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(audit_log.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    write_log(tmp_path / "audit.jsonl", 3)
    assert len(synced) == 3


def test_a_failed_append_stops_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append(**decision(0))

        def fail(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(audit_log.os, "fdatasync", fail)
        with pytest.raises(AuditLogError, match="No space left"):
            log.append(**decision(1))
        monkeypatch.undo()
        with pytest.raises(AuditLogError, match="failed earlier"):
            log.append(**decision(2))


def test_an_unknown_outcome_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log, pytest.raises(ValueError, match="outcome"):
        log.append(**{**decision(1), "outcome": "maybe"})


def test_a_torn_last_line_is_reported_and_blocks_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert verify(path) == (False, 3)
    with pytest.raises(AuditLogError, match="torn or altered"):
        AuditLog(path)


def test_reopening_refuses_an_altered_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    path.write_bytes(path.read_bytes().replace(b'"applied"', b'"dry_run"'))
    with pytest.raises(AuditLogError, match=r"audit\.jsonl"):
        AuditLog(path)


# ---- tamper detection -----------------------------------------------------------------------


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_editing_one_field_is_caught_at_that_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    rows = lines(path)
    entry = json.loads(rows[2])
    entry["outcome"] = "applied" if entry["outcome"] != "applied" else "unchanged"
    rows[2] = canonical(entry)
    rewrite(path, rows)
    assert verify(path) == (False, 3)


def test_editing_and_rehashing_a_line_is_caught_at_the_next(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    rows = lines(path)
    entry = json.loads(rows[1])
    entry["new_cap_w"] = 999.0
    entry["hash"] = entry_hash(entry)
    rows[1] = canonical(entry)
    rewrite(path, rows)
    assert verify(path) == (False, 3)


def test_whitespace_only_edits_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    rows = lines(path)
    rows[1] = rows[1].replace(b'":', b'": ', 1)
    rewrite(path, rows)
    assert verify(path) == (False, 2)


def test_deleting_a_line_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    rows = lines(path)
    del rows[1]
    rewrite(path, rows)
    assert verify(path) == (False, 2)


def test_swapping_two_lines_is_caught_at_the_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    rows = lines(path)
    rows[1], rows[3] = rows[3], rows[1]
    rewrite(path, rows)
    assert verify(path) == (False, 2)


def test_truncating_the_tail_needs_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = write_log(path, 4)
    rewrite(path, lines(path)[:3])
    assert verify(path) == (True, None)  # a shorter chain is still a chain ...
    assert verify(path, must_contain_hash=hashes[-1]) == (False, 4)  # ... unless anchored
    assert verify(path, must_contain_hash=hashes[1]) == (True, None)


def test_garbage_lines_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    for junk in (b"not json\n", b"[]\n", b"{}\n", b"\n"):
        rows = lines(path)
        rewrite(path, [rows[0], junk, *rows[1:]])
        assert verify(path) == (False, 2)
        rewrite(path, rows)
    assert verify(path) == (True, None)


FIELDS_TO_EDIT = sorted(audit_log.ENTRY_FIELDS)


@st.composite
def tampering(draw: st.DrawFn) -> tuple[int, str, int, int | str]:
    """(log length, operation, line index, operation argument)."""
    n = draw(st.integers(2, 8))
    op = draw(st.sampled_from(["edit", "delete", "swap"]))
    if op == "edit":
        return n, op, draw(st.integers(0, n - 1)), draw(st.sampled_from(FIELDS_TO_EDIT))
    if op == "delete":
        return n, op, draw(st.integers(0, n - 2)), 0  # deleting the last line needs an anchor
    i = draw(st.integers(0, n - 2))
    return n, op, i, draw(st.integers(i + 1, n - 1))


@settings(max_examples=40, deadline=None)
@given(case=tampering())
def test_any_edit_delete_or_swap_is_caught_at_the_first_bad_line(
    case: tuple[int, str, int, int | str],
) -> None:
    n, op, i, arg = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        write_log(path, n)
        rows = lines(path)
        if op == "edit":
            entry = json.loads(rows[i])
            entry[str(arg)] = "tampered" if entry[str(arg)] != "tampered" else "x"
            rows[i] = canonical(entry)
        elif op == "delete":
            del rows[i]
        else:
            j = int(arg)
            rows[i], rows[j] = rows[j], rows[i]
        rewrite(path, rows)
        assert verify(path) == (False, i + 1)
