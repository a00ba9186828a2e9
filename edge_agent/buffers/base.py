"""The outbox interface: records wait here, durable, until a sink confirmed their delivery."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Buffer", "OutboxRecord", "PendingRecord"]


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record to store: its payload is built by the caller once the sequence number is known."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A stored record. ``seq`` is the device-wide sequence number, unique across restarts."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Buffer(Protocol):
    """A durable FIFO of records. Methods are synchronous and called from one thread at a time
    (the agent runs them on a dedicated worker thread so the event loop never waits on disk)."""

    def reserve(self, count: int) -> range:
        """Allocate ``count`` sequence numbers for payloads about to be added (in memory)."""
        ...

    def add(self, records: Sequence[tuple[int, PendingRecord]]) -> None:
        """Store records under their reserved numbers. Durable when it returns."""
        ...

    def begin(self, limit: int) -> list[OutboxRecord]:
        """Hand out up to ``limit`` of the oldest records not already handed out."""
        ...

    def accept(self, seqs: Collection[int]) -> None:
        """Remove delivered records."""
        ...

    def rewind(self) -> None:
        """Forget what was handed out, so that undelivered records are handed out again."""
        ...

    def rows(self) -> int:
        """How many records wait."""
        ...

    def close(self) -> None: ...
