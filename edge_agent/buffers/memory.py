"""In-memory buffer: the same behaviour as the SQLite outbox without the durability.

Records and sequence numbers are lost when the process ends, so it serves tests and devices
without writable storage; the agent uses the SQLite buffer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

from edge_agent.buffers.base import (
    AddResult,
    BufferFull,
    BufferLimits,
    OutboxRecord,
    PendingRecord,
    count_fitting,
)

__all__ = ["MemoryBuffer"]


class MemoryBuffer:
    """Records in a dict ordered by sequence number. Not thread-safe: one thread at a time."""

    def __init__(self, limits: BufferLimits | None = None) -> None:
        self.limits = limits or BufferLimits()
        self._records: OrderedDict[int, tuple[OutboxRecord, int]] = OrderedDict()
        self._next_seq = 0
        self._cursor = -1
        self._bytes = 0

    def reserve(self, count: int) -> range:
        first = self._next_seq
        self._next_seq += count
        return range(first, first + count)

    def add(self, records: Sequence[tuple[int, PendingRecord]]) -> AddResult:
        limits = self.limits
        incoming = list(records)
        dropped_newest = 0
        if incoming and self._records:
            fits = count_fitting(incoming, len(self._records), self._bytes, limits)
            if fits < len(incoming) and limits.overflow == "refuse":
                raise BufferFull(f"the in-memory buffer is full ({len(self._records)} records)")
            if limits.overflow == "drop_newest":
                dropped_newest = len(incoming) - fits
                incoming = incoming[:fits]
        for seq, record in incoming:
            stored = OutboxRecord(seq, record.topic, record.payload, record.qos, record.retain)
            self._records[seq] = (stored, record.size)
            self._bytes += record.size
        dropped_oldest = 0
        if limits.overflow == "drop_oldest":
            while self._records and (
                len(self._records) > limits.max_rows or self._bytes > limits.max_bytes
            ):
                _seq, (_record, size) = self._records.popitem(last=False)
                self._bytes -= size
                dropped_oldest += 1
        return AddResult(len(incoming), dropped_oldest, dropped_newest)

    def begin(self, limit: int) -> list[OutboxRecord]:
        batch: list[OutboxRecord] = []
        for seq, (record, _size) in self._records.items():
            if len(batch) >= limit:
                break
            if seq > self._cursor:
                batch.append(record)
        if batch:
            self._cursor = batch[-1].seq
        return batch

    def accept(self, seqs: Collection[int]) -> None:
        for seq in seqs:
            removed = self._records.pop(seq, None)
            if removed is not None:
                self._bytes -= removed[1]

    def rewind(self) -> None:
        self._cursor = -1

    @property
    def rows(self) -> int:
        return len(self._records)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self._records.clear()
        self._bytes = 0
