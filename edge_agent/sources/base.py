"""What every source produces (samples grouped in readings) and the interface a source offers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = ["Quality", "Reading", "Sample", "Source"]


class Quality(StrEnum):
    """OPC-UA style quality of a value: only GOOD values feed a model unless a policy says so."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one tag at one time (seconds since the epoch)."""

    tag: str
    value: float
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(slots=True)
class Reading:
    """What one source message yields: samples of one asset, and how to acknowledge the message.

    ``ack`` is called once the results built from the reading are durable in the outbox (or the
    reading was refused), so that a crash in between makes the broker send it again.
    """

    source: str
    asset: str
    origin: str  # topic or node id, for messages a person reads
    samples: list[Sample]
    ack: Callable[[], None] | None = field(default=None, repr=False)

    def acknowledge(self) -> None:
        if self.ack is not None:
            ack, self.ack = self.ack, None
            ack()


class Source(Protocol):
    """A stream of readings from the plant.

    ``start`` is awaited once before ``readings`` is iterated (it connects, or begins to: a source
    whose peer is down keeps retrying by itself and reports its state). ``readings`` is iterated
    by exactly one task; it yields batches so that a burst costs one wake-up. ``stop`` is awaited
    once at shutdown after iteration ended or was cancelled; it releases the connection.
    """

    name: str

    @property
    def state(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` or ``stopped`` (status, heartbeat)."""
        ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the source is subscribed to everything it reads."""
        ...

    def readings(self) -> AsyncIterator[list[Reading]]: ...

    async def stop(self) -> None: ...
