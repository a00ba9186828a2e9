"""The buffer interface: records wait here until a sink confirmed their delivery."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edge_agent.errors import OutboxError

__all__ = [
    "AddResult",
    "Buffer",
    "BufferFull",
    "BufferLimits",
    "BufferOverflow",
    "OutboxRecord",
    "PendingRecord",
    "count_fitting",
]

# What ``add`` does when the records do not fit: delete the oldest stored ones, keep the stored
# ones and drop the new ones that do not fit, or refuse the whole batch (raise BufferFull) so the
# caller can wait for space.
BufferOverflow = Literal["drop_oldest", "drop_newest", "refuse"]


class BufferFull(OutboxError):
    """``add`` refused a batch under the ``refuse`` policy; nothing was stored."""


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """Caps of a buffer. A record's size is its topic and payload in bytes."""

    max_rows: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    overflow: BufferOverflow = "drop_oldest"

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < 1:
            raise ValueError("buffer caps must be at least 1")


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record to store under a sequence number reserved with ``Buffer.reserve``."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    size: int = field(init=False)  # topic and payload in bytes, what the caps count

    def __post_init__(self) -> None:
        # Computed once: the caps read it several times per record on the hot path.
        object.__setattr__(self, "size", len(self.topic.encode()) + len(self.payload))


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A stored record. ``seq`` is the device-wide sequence number, unique across restarts."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``add`` did: how many new records it stored and how many records the caps dropped."""

    stored: int
    dropped_oldest: int = 0
    dropped_newest: int = 0


class Buffer(Protocol):
    """A FIFO of records ordered by sequence number.

    Every method is synchronous and is called from one thread at a time (the outbox runs them on
    its own worker thread so the event loop never waits on the disk). Reading the ``rows`` and
    ``size_bytes`` properties from another thread is safe: they are plain integers.
    """

    limits: BufferLimits

    def reserve(self, count: int) -> range:
        """Allocate ``count`` consecutive sequence numbers, never handed out before.

        Called before the payloads are built (they carry their number); numbers reserved but
        never stored are gaps, which receivers tolerate.
        """
        ...

    def add(self, records: Sequence[tuple[int, PendingRecord]]) -> AddResult:
        """Store records under their reserved numbers, in one transaction, applying the caps.

        When it returns, the stored records survive a crash of the process (and, for a durable
        buffer, what its synchronous setting promises of a power cut). Raises BufferFull under the
        ``refuse`` policy (unless the buffer is empty), OutboxError when the store fails.
        """
        ...

    def begin(self, limit: int) -> list[OutboxRecord]:
        """Hand out up to ``limit`` of the oldest records not handed out since the last rewind."""
        ...

    def accept(self, seqs: Collection[int]) -> None:
        """Remove delivered records (numbers no longer stored are ignored)."""
        ...

    def rewind(self) -> None:
        """Forget what was handed out, so that undelivered records are handed out again."""
        ...

    @property
    def rows(self) -> int:
        """How many records wait."""
        ...

    @property
    def size_bytes(self) -> int:
        """The size of the records that wait (topics and payloads)."""
        ...

    def close(self) -> None:
        """Release the storage. Called once, last."""
        ...


def count_fitting(
    incoming: Sequence[tuple[int, PendingRecord]], rows: int, size: int, limits: BufferLimits
) -> int:
    """How many of ``incoming``, taken in order, fit beside ``rows`` records of ``size`` bytes."""
    if (
        rows + len(incoming) <= limits.max_rows
        and size + sum(record.size for _seq, record in incoming) <= limits.max_bytes
    ):
        return len(incoming)  # the usual case, without walking the batch
    count = 0
    for _seq, record in incoming:
        rows += 1
        size += record.size
        if rows > limits.max_rows or size > limits.max_bytes:
            break
        count += 1
    return count
