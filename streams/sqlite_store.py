"""The embedded default's storage: SQLite, shaped like the InfluxDB measurements.

Rows are keyed like InfluxDB points (series + timestamp) and written with ``INSERT OR REPLACE``,
so replays are idempotent here too. One column per metric of the v1 registry (absent = NULL).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from accelpilot.schemas import codec
from accelpilot.schemas.action_results import ActionResult
from accelpilot.schemas.actions import Action
from accelpilot.schemas.aggregates import Aggregate
from accelpilot.schemas.dlq import DeadLetter
from accelpilot.schemas.metrics import METRICS
from accelpilot.schemas.samples import HostSample

_METRIC_COLS = list(METRICS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS device_sample (
    device TEXT NOT NULL, ts_ns INTEGER NOT NULL, host TEXT NOT NULL, kind TEXT NOT NULL,
    seq INTEGER NOT NULL, {", ".join(f"{m} REAL" for m in _METRIC_COLS)},
    PRIMARY KEY (device, ts_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS device_sample_ts ON device_sample (ts_ns);
CREATE TABLE IF NOT EXISTS dead_letter (
    source_topic TEXT, partition INTEGER, offset INTEGER, reason TEXT, detail TEXT,
    rejected_ts_ns INTEGER, original BLOB, PRIMARY KEY (source_topic, partition, offset)
);
CREATE TABLE IF NOT EXISTS action (
    action_id TEXT PRIMARY KEY, ts_ns INTEGER, host TEXT, device TEXT, kind TEXT,
    issuer TEXT, mode TEXT, reason TEXT, payload BLOB
);
CREATE TABLE IF NOT EXISTS action_result (
    action_id TEXT, device TEXT, ts_ns INTEGER, host TEXT, outcome TEXT, reason TEXT,
    previous_cap_w REAL, new_cap_w REAL, audit_hash TEXT, PRIMARY KEY (action_id, device)
);
CREATE TABLE IF NOT EXISTS event (
    id TEXT PRIMARY KEY, topic TEXT, ts_ns INTEGER, host TEXT, device TEXT, payload BLOB
);
CREATE INDEX IF NOT EXISTS event_topic_ts ON event (topic, ts_ns);
CREATE INDEX IF NOT EXISTS action_ts ON action (ts_ns);
CREATE TABLE IF NOT EXISTS aggregate (
    scope TEXT NOT NULL, key TEXT NOT NULL, window_s REAL NOT NULL,
    window_start_ns INTEGER NOT NULL, host TEXT, sample_count INTEGER, gap_count INTEGER,
    energy_j REAL, payload BLOB, PRIMARY KEY (scope, key, window_s, window_start_ns)
) WITHOUT ROWID;
"""


class SqliteStore:
    """Thread-safe (one connection, one lock): the demo's loop writes, the console reads."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)
        cols = ["device", "ts_ns", "host", "kind", "seq", *_METRIC_COLS]
        self._insert_sample = (
            f"INSERT OR REPLACE INTO device_sample ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})"
        )

    def write_samples(self, samples: Iterable[HostSample]) -> int:
        rows = []
        for s in samples:
            columns = [s.metrics.get(m) for m in _METRIC_COLS]
            for i, device in enumerate(s.device_ids):
                rows.append(
                    (
                        device,
                        s.ts_ns,
                        s.host_id,
                        s.device_kinds[i],
                        s.seq,
                        *[(c[i] if c is not None else None) for c in columns],
                    )
                )
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(self._insert_sample, rows)
            self._db.execute("COMMIT")
        return len(rows)

    def write_dead_letter(self, d: DeadLetter) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letter VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    d.source_topic,
                    d.partition,
                    d.offset,
                    d.reason,
                    d.detail,
                    d.rejected_ts_ns,
                    d.original,
                ),
            )

    def write_action(self, a: Action) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO action VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    a.action_id,
                    a.issued_ts_ns,
                    a.host_id,
                    a.device_id,
                    a.kind,
                    a.issuer,
                    a.mode,
                    a.reason,
                    codec.encode(a),
                ),
            )

    def write_results(self, results: Sequence[ActionResult]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO action_result VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.action_id,
                        r.device_id or "",
                        r.ts_ns,
                        r.host_id,
                        r.outcome,
                        r.reason,
                        r.previous_cap_w,
                        r.new_cap_w,
                        r.audit_hash,
                    )
                    for r in results
                ],
            )

    def write_aggregates(self, aggregates: Sequence[Aggregate]) -> int:
        """One row per (scope, key, window); the statistics are the encoded payload."""
        rows = [
            (
                a.scope,
                a.key,
                a.window_s,
                a.window_start_ns,
                a.host_id,
                a.sample_count,
                a.gap_count,
                a.energy_j,
                codec.encode(a),
            )
            for a in aggregates
        ]
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO aggregate VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        return len(rows)

    def write_event(
        self, event_id: str, topic: str, ts_ns: int, host: str, device: str | None, payload: bytes
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO event VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, topic, ts_ns, host, device, payload),
            )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
