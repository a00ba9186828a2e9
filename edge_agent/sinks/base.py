"""The sink interface: where outbox records are delivered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.buffers.base import OutboxRecord

__all__ = ["Sink"]


class Sink(Protocol):
    """Delivers records. ``write`` is awaited by one task at a time (the outbox forwarder)."""

    @property
    def ready(self) -> bool:
        """True while the sink can deliver (for example, connected to its broker)."""
        ...

    async def wait_ready(self) -> None:
        """Return once the sink can deliver."""
        ...

    async def write(self, records: Sequence[OutboxRecord]) -> None:
        """Deliver ``records``; return only when every one is confirmed (for MQTT: PUBACK).

        Raises PartialWriteError carrying the confirmed sequence numbers when only some were;
        the others stay in the outbox and are handed out again.
        """
        ...
