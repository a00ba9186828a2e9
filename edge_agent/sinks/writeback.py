"""Write-back sinks: result outputs pushed to the control side, built by ``build_writeback``.

Unlike the outbox's sinks, a write-back keeps only the newest value of each target: a controller
acts on what it reads now, so an old result replayed after an outage would do harm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.contracts.payloads import OutputValue

if TYPE_CHECKING:
    from edge_agent.config import SinkConfig
    from edge_agent.health import Health

__all__ = ["WriteBack", "build_writeback"]


class WriteBack(Protocol):
    """``start`` is awaited once before the model loads and ``stop`` once after the sources
    stopped. ``offer`` is called on the event loop after each inference batch; it never waits."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def offer(self, assets: Sequence[str], outputs: Sequence[dict[str, OutputValue]]) -> None:
        """Take one batch's results: the asset and the outputs of each window, oldest first."""
        ...


def build_writeback(config: SinkConfig, health: Health, shared: dict[str, Any]) -> WriteBack:
    """The registry from a sink's config ``type`` to its class (imported only when configured)."""
    if config.type == "opcua":
        from edge_agent.sinks.opcua import OpcUaWriteBack

        return OpcUaWriteBack(config, health, shared)
    raise AssertionError(f"unhandled sink type {config.type!r}")  # config validation prevents it
