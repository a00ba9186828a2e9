"""SQLite buffer (WAL journal): records stay on disk until the broker acknowledged them.

Durability: every ``add`` is one transaction. With ``synchronous="full"`` the WAL is synced at
each commit, so a committed batch survives a power cut; with ``"normal"`` it is synced only at
checkpoints, so a power cut may lose the commits since the last one (a process crash loses
nothing in either mode). See docs/durability.md.

Sequence numbers come from a lease kept in ``<db>.seq`` beside the database: the file holds a
number above every number handed out, written ahead in blocks, so that numbers are never reused
after a restart, even when the outbox was emptied, its file was moved aside as corrupt, or records
were published directly while the disk was full.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

from edge_agent.buffers.base import (
    AddResult,
    BufferFull,
    BufferLimits,
    OutboxRecord,
    PendingRecord,
    count_fitting,
)
from edge_agent.errors import OutboxError

__all__ = ["LEASE_BLOCK", "OutboxCorrupt", "SqliteBuffer", "Synchronous"]

logger = logging.getLogger(__name__)

Synchronous = Literal["full", "normal"]

# Sequence numbers leased ahead per write of the lease file (one small fsync per block).
LEASE_BLOCK = 10_000
_LEASE_LEN = 64
_DELETE_CHUNK = 500
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
"""


class OutboxCorrupt(OutboxError):
    """The database file is damaged (not a database, or a corrupt page)."""


def _translate(err: sqlite3.Error, doing: str, path: Path) -> OutboxError:
    code = getattr(err, "sqlite_errorcode", None)
    if code == _SQLITE_FULL:
        return OutboxError(
            f"cannot {doing}: the disk holding {path} is full, or the file reached its size "
            f"limit ({err}); free space on that filesystem"
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return OutboxCorrupt(f"cannot {doing}: {path} is damaged ({err})")
    return OutboxError(f"cannot {doing} in {path}: {err}")


class SqliteBuffer:
    """The outbox on one SQLite file. Not thread-safe: use it from one thread at a time.

    Opening does I/O (run it on the outbox thread). A file that is not a database, or is damaged
    beyond opening, is moved aside as ``<name>.corrupt-<UTC time>`` and a new one started;
    ``moved_aside`` then names where it went, so the caller can raise an alert.
    """

    def __init__(
        self,
        path: Path,
        limits: BufferLimits | None = None,
        *,
        synchronous: Synchronous = "full",
        max_page_count: int | None = None,
    ) -> None:
        self.path = path
        self.limits = limits or BufferLimits()
        self.moved_aside: Path | None = None
        # Wall-clock time of the previous run's last lease write: a clock now behind it jumped.
        self.previous_wall_time: float | None = None
        self._synchronous = synchronous
        self._max_page_count = max_page_count
        self._lease_path = path.with_name(path.name + ".seq")
        self._cursor = -1
        self._lease_failed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutboxError(f"cannot create the outbox directory {path.parent}: {err}") from err
        try:
            self._db = self._open()
        except OutboxCorrupt as err:
            self.moved_aside = self._move_aside()
            logger.error("Outbox %s moved aside to %s: %s", path, self.moved_aside, err)
            self._db = self._open()
        leased, self.previous_wall_time = self._read_lease()
        highest = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        self._next_seq = max(leased, (highest if highest is not None else -1) + 1)
        self._lease = self._next_seq
        self._extend_lease(0)

    # -------------------------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            # Keep the WAL from staying large after a long outage was replayed.
            db.execute("PRAGMA journal_size_limit=67108864")
            if self._max_page_count is not None:
                db.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "size" not in columns:  # a file from before sizes were kept
                db.execute("ALTER TABLE outbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                db.execute("UPDATE outbox SET size = length(CAST(topic AS BLOB)) + length(payload)")
            rows, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as err:
            if db is not None:
                db.close()
            raise _translate(err, "open the outbox", self.path) from err
        self._rows = int(rows)
        self._bytes = int(size)
        return db

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                companion = self.path.with_name(self.path.name + suffix)
                if companion.exists():
                    companion.replace(target.with_name(target.name + suffix))
        except OSError as err:
            raise OutboxError(f"cannot move the damaged outbox {self.path} aside: {err}") from err
        return target

    # ---------------------------------------------------------------------- sequence numbers

    def _read_lease(self) -> tuple[int, float | None]:
        try:
            text = self._lease_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0, None
        except (OSError, UnicodeDecodeError) as err:
            logger.error("Cannot read the sequence lease %s: %s", self._lease_path, err)
            return 0, None
        try:
            number, wall = text.split()
            return int(number), float(wall)
        except ValueError:
            logger.error("The sequence lease %s is damaged; numbering goes on", self._lease_path)
            return 0, None

    def _extend_lease(self, count: int) -> None:
        """Make sure numbers up to ``next + count`` are covered by the lease on disk."""
        if self._next_seq + count <= self._lease and count:
            return
        lease = self._next_seq + count + LEASE_BLOCK
        text = f"{lease} {time.time():.3f}".ljust(_LEASE_LEN - 1) + "\n"
        try:
            # Overwritten in place: an allocated block needs no free space on a full disk.
            fd = os.open(self._lease_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, text.encode("ascii"), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            if not self._lease_failed:
                self._lease_failed = True
                logger.error(
                    "Cannot write the sequence lease %s (%s): numbers above %d may be reused "
                    "after a restart",
                    self._lease_path,
                    err,
                    self._lease,
                )
            return
        self._lease_failed = False
        self._lease = lease

    def reserve(self, count: int) -> range:
        self._extend_lease(count)
        first = self._next_seq
        self._next_seq += count
        return range(first, first + count)

    # ---------------------------------------------------------------------------- records

    def add(self, records: Sequence[tuple[int, PendingRecord]]) -> AddResult:
        if not records:
            return AddResult(0)
        limits = self.limits
        incoming = list(records)
        dropped_newest = 0
        if self._rows:
            fits = count_fitting(incoming, self._rows, self._bytes, limits)
            if fits < len(incoming) and limits.overflow == "refuse":
                raise BufferFull(
                    f"the outbox {self.path} is full ({self._rows} records, {self._bytes} bytes)"
                )
            if limits.overflow == "drop_newest":
                dropped_newest = len(incoming) - fits
                incoming = incoming[:fits]
        rows_in = [(seq, r.topic, r.payload, r.qos, int(r.retain), r.size) for seq, r in incoming]
        rows = self._rows + len(incoming)
        size = self._bytes + sum(row[5] for row in rows_in)
        dropped_oldest = 0
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO outbox (seq, topic, payload, qos, retain, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows_in,
            )
            if limits.overflow == "drop_oldest" and (
                rows > limits.max_rows or size > limits.max_bytes
            ):
                dropped_oldest, freed = self._trim(rows, size)
                rows -= dropped_oldest
                size -= freed
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise _translate(err, f"store {len(incoming)} records", self.path) from err
        self._rows = rows
        self._bytes = size
        return AddResult(len(incoming), dropped_oldest, dropped_newest)

    def _trim(self, rows: int, size: int) -> tuple[int, int]:
        """Inside a transaction: delete the oldest records until the caps hold again."""
        limits = self.limits
        removed = freed = 0
        last = -1
        while rows - removed > limits.max_rows or size - freed > limits.max_bytes:
            chunk = self._db.execute(
                "SELECT seq, size FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1000", (last,)
            ).fetchall()
            if not chunk:
                break
            for seq, record_size in chunk:
                if rows - removed <= limits.max_rows and size - freed <= limits.max_bytes:
                    break
                removed += 1
                freed += record_size
                last = seq
        if removed:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        return removed, freed

    def begin(self, limit: int) -> list[OutboxRecord]:
        try:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (self._cursor, limit),
            ).fetchall()
        except sqlite3.Error as err:
            raise _translate(err, "read the outbox", self.path) from err
        if rows:
            self._cursor = rows[-1][0]
        return [
            OutboxRecord(seq, topic, bytes(payload), qos, bool(retain))
            for seq, topic, payload, qos, retain in rows
        ]

    def accept(self, seqs: Collection[int]) -> None:
        if not seqs:
            return
        numbers = list(seqs)
        db = self._db
        removed = freed = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            for at in range(0, len(numbers), _DELETE_CHUNK):
                chunk = numbers[at : at + _DELETE_CHUNK]
                marks = ",".join("?" * len(chunk))
                sizes = db.execute(
                    f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING size",  # noqa: S608
                    chunk,
                ).fetchall()
                removed += len(sizes)
                freed += sum(size for (size,) in sizes)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise _translate(err, "remove delivered records", self.path) from err
        self._rows -= removed
        self._bytes -= freed

    def rewind(self) -> None:
        self._cursor = -1

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self._db.close()
