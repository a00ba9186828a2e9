"""SQLite outbox (WAL journal): records stay on disk until the broker acknowledged them."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

from edge_agent.buffers.base import OutboxRecord, PendingRecord
from edge_agent.errors import OutboxError

__all__ = ["SqliteBuffer"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteBuffer:
    """The outbox on one SQLite file. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: Path, *, max_rows: int = 1_000_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            stored_next = int(row[0]) if row else 0
            highest = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
            self._next_seq = max(stored_next, (highest or -1) + 1)
            self._rows = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as err:
            raise OutboxError(f"cannot open the outbox {path}: {err}") from err
        self._cursor = -1

    def reserve(self, count: int) -> range:
        first = self._next_seq
        self._next_seq += count
        return range(first, first + count)

    def add(self, records: Sequence[tuple[int, PendingRecord]]) -> None:
        if not records:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO outbox (seq, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                [(seq, r.topic, r.payload, r.qos, int(r.retain)) for seq, r in records],
            )
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=MAX(value, excluded.value)",
                (self._next_seq,),
            )
            overflow = self._rows + len(records) - self.max_rows
            if overflow > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                    (overflow,),
                )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OutboxError(f"cannot store {len(records)} records in {self.path}: {err}") from err
        self._rows += len(records)
        if overflow > 0:
            self._rows -= overflow
            self.dropped += overflow

    def begin(self, limit: int) -> list[OutboxRecord]:
        try:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (self._cursor, limit),
            ).fetchall()
        except sqlite3.Error as err:
            raise OutboxError(f"cannot read the outbox {self.path}: {err}") from err
        if rows:
            self._cursor = rows[-1][0]
        return [
            OutboxRecord(seq, topic, bytes(payload), qos, bool(retain))
            for seq, topic, payload, qos, retain in rows
        ]

    def accept(self, seqs: Collection[int]) -> None:
        if not seqs:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
            removed = self._db.total_changes - before
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OutboxError(f"cannot remove delivered records from {self.path}: {err}") from err
        self._rows -= removed

    def rewind(self) -> None:
        self._cursor = -1

    def rows(self) -> int:
        return self._rows

    def close(self) -> None:
        self._db.close()
