"""One behavioural suite run against every buffer implementation, plus what only SQLite promises."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from edge_agent.buffers import (
    Buffer,
    BufferFull,
    BufferLimits,
    MemoryBuffer,
    OutboxRecord,
    PendingRecord,
    SqliteBuffer,
)
from edge_agent.errors import OutboxError

MakeBuffer = Callable[[BufferLimits], Buffer]


@pytest.fixture(params=["memory", "sqlite"])
def make_buffer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBuffer]:
    made: list[Buffer] = []

    def make(limits: BufferLimits) -> Buffer:
        buffer: Buffer
        if request.param == "memory":
            buffer = MemoryBuffer(limits)
        else:
            buffer = SqliteBuffer(tmp_path / f"outbox-{len(made)}.db", limits)
        made.append(buffer)
        return buffer

    yield make
    for buffer in made:
        buffer.close()


def put(buffer: Buffer, *payloads: bytes, topic: str = "t") -> list[int]:
    seqs = list(buffer.reserve(len(payloads)))
    buffer.add(
        [(seq, PendingRecord(topic, payload)) for seq, payload in zip(seqs, payloads, strict=True)]
    )
    return seqs


def payloads(records: Sequence[OutboxRecord]) -> list[bytes]:
    return [record.payload for record in records]


def test_records_come_out_oldest_first_and_leave_only_when_accepted(
    make_buffer: MakeBuffer,
) -> None:
    buffer = make_buffer(BufferLimits())
    seqs = put(buffer, b"a", b"b", b"c")
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert payloads(buffer.begin(2)) == [b"a", b"b"]
    assert payloads(buffer.begin(2)) == [b"c"]  # not handed out twice
    assert buffer.begin(2) == []
    buffer.accept([seqs[0]])
    assert buffer.rows == 2
    buffer.rewind()  # undelivered records are handed out again, in order
    assert payloads(buffer.begin(10)) == [b"b", b"c"]
    buffer.accept(seqs)  # numbers already gone are ignored
    assert buffer.rows == 0 and buffer.size_bytes == 0


def test_sizes_count_topic_and_payload(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(BufferLimits())
    put(buffer, b"12345", topic="ab")
    assert buffer.size_bytes == 7


def test_drop_oldest_keeps_the_newest_and_counts(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(BufferLimits(max_rows=5, overflow="drop_oldest"))
    put(buffer, *[b"%d" % i for i in range(4)])
    result = buffer.add(
        [(seq, PendingRecord("t", b"%d" % (4 + i))) for i, seq in enumerate(buffer.reserve(3))]
    )
    assert (result.stored, result.dropped_oldest, result.dropped_newest) == (3, 2, 0)
    assert payloads(buffer.begin(10)) == [b"2", b"3", b"4", b"5", b"6"]
    assert buffer.rows == 5


def test_drop_oldest_by_bytes(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(BufferLimits(max_bytes=30, overflow="drop_oldest"))
    put(buffer, *[b"x" * 9 for _ in range(3)])  # 10 bytes each with the topic
    put(buffer, b"y" * 9)
    assert buffer.rows == 3 and buffer.size_bytes == 30
    assert payloads(buffer.begin(10))[-1] == b"y" * 9


def test_drop_newest_keeps_what_is_stored(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(BufferLimits(max_rows=3, overflow="drop_newest"))
    put(buffer, b"a", b"b")
    result = buffer.add([(seq, PendingRecord("t", b"n")) for seq in buffer.reserve(3)])
    assert (result.stored, result.dropped_oldest, result.dropped_newest) == (1, 0, 2)
    assert payloads(buffer.begin(10)) == [b"a", b"b", b"n"]


def test_refuse_stores_nothing_until_space_frees(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(BufferLimits(max_rows=2, overflow="refuse"))
    first = put(buffer, b"a", b"b")
    with pytest.raises(BufferFull):
        put(buffer, b"c")
    assert buffer.rows == 2
    buffer.accept(first[:1])
    put(buffer, b"c")
    assert payloads(buffer.begin(10)) == [b"b", b"c"]


def test_an_empty_buffer_takes_a_batch_over_its_cap(make_buffer: MakeBuffer) -> None:
    # Refusing it would wait forever: nothing could ever make room.
    buffer = make_buffer(BufferLimits(max_rows=2, overflow="refuse"))
    put(buffer, b"a", b"b", b"c")
    assert buffer.rows == 3


# ------------------------------------------------------------------------- SQLite only


def test_records_and_numbers_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    buffer = SqliteBuffer(path)
    seqs = put(buffer, b"a", b"b")
    buffer.close()
    again = SqliteBuffer(path)
    assert payloads(again.begin(10)) == [b"a", b"b"]
    again.accept(seqs)
    again.close()
    # Emptied, reopened: numbers still go up, never reused.
    third = SqliteBuffer(path)
    assert min(third.reserve(1)) > max(seqs)
    third.close()


def test_numbers_are_not_reused_when_the_database_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    buffer = SqliteBuffer(path)
    used = list(buffer.reserve(25_000))  # beyond one lease block, never stored
    buffer.close()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    again = SqliteBuffer(path)
    assert min(again.reserve(1)) > max(used)
    again.close()


def test_a_file_of_garbage_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, just garbage" * 100)
    buffer = SqliteBuffer(path)
    assert buffer.moved_aside is not None
    assert buffer.moved_aside.name.startswith("outbox.db.corrupt-")
    assert buffer.moved_aside.read_bytes().startswith(b"this is not a database")
    put(buffer, b"a")
    assert payloads(buffer.begin(1)) == [b"a"]
    buffer.close()


def test_a_full_file_raises_a_clear_error_and_recovers_when_space_frees(tmp_path: Path) -> None:
    buffer = SqliteBuffer(tmp_path / "outbox.db", max_page_count=40)
    stored: list[int] = []

    def fill() -> None:
        for _ in range(1000):
            stored.extend(put(buffer, b"x" * 4000))

    with pytest.raises(OutboxError, match="full"):
        fill()
    assert buffer.rows == len(stored) > 0
    buffer.accept(stored)
    put(buffer, b"after")
    assert payloads(buffer.begin(10)) == [b"after"]
    buffer.close()


def test_synchronous_setting_is_applied(tmp_path: Path) -> None:
    for setting, expected in (("full", 2), ("normal", 1)):
        buffer = SqliteBuffer(tmp_path / f"{setting}.db", synchronous=setting)  # type: ignore[arg-type]
        assert buffer._db.execute("PRAGMA synchronous").fetchone()[0] == expected
        assert buffer._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        buffer.close()


def test_a_file_without_sizes_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO outbox VALUES (7, 'ab', x'0102', 1, 0)")
    db.commit()
    db.close()
    buffer = SqliteBuffer(path)
    assert (buffer.rows, buffer.size_bytes) == (1, 4)
    assert min(buffer.reserve(1)) == 8
    buffer.close()
