"""The sink interface: where outbox records are delivered."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Sink"]


class Sink(Protocol):
    """Delivers messages, confirming each one. Every method is called on the event loop's thread.

    The outbox forwarder keeps a window of sends in flight; a message leaves the outbox only when
    its send completed without error.
    """

    @property
    def ready(self) -> bool:
        """True while the sink can deliver (for example, connected to its broker)."""
        ...

    async def wait_ready(self) -> None:
        """Return once the sink can deliver."""
        ...

    def send(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> asyncio.Future[None]:
        """Start delivering one message; returns at once.

        The future completes when the peer confirmed the message (for MQTT QoS 1: the PUBACK,
        possibly after a reconnect, since the client resends what was not confirmed), or at once
        for fire-and-forget QoS 0. It fails with PublishRefused when the peer refused the message
        for good, and with NotReadyError when the sink stopped or could not take it.
        """
        ...
