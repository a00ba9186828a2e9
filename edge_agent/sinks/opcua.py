"""OPC-UA write-back: result outputs written to PLC nodes, through the session shared per server.

A PLC acts on what it reads now, so only the newest value of each node matters: a value replaced
before it was written is superseded, and results offered while the server is away are skipped
rather than queued (both counted). Results still reach MQTT through the durable outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node

from edge_agent.contracts.payloads import OutputValue
from edge_agent.opcua import session_for

if TYPE_CHECKING:
    from edge_agent.config import OpcUaSinkConfig, OpcUaWrite
    from edge_agent.health import Health

__all__ = ["OpcUaWriteBack"]

logger = logging.getLogger(__name__)

_INTEGERS = {
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}


def _variant(value: OutputValue, kind: ua.VariantType) -> ua.Variant:
    """The output as the node's own data type (a PLC refuses a Double written to an Int16)."""
    if kind == ua.VariantType.String:
        return ua.Variant(str(value), kind)
    if isinstance(value, str):
        raise ValueError(f"output {value!r} is text; the node holds {kind.name}")
    if kind == ua.VariantType.Boolean:
        return ua.Variant(bool(value), kind)
    if kind in _INTEGERS:
        return ua.Variant(round(value), kind)
    return ua.Variant(float(value), kind)


class OpcUaWriteBack:
    """Writes configured outputs of each result to nodes.

    ``offer`` is called on the event loop by the inference stage with each batch's results and
    never waits. ``start`` and ``stop`` are awaited once each; between them a named task writes.
    """

    watchdog_s = 0.0  # it reads nothing, so it is never silent

    def __init__(self, config: OpcUaSinkConfig, health: Health, shared: dict[str, Any]) -> None:
        self.name = config.name
        self._config = config
        self._health = health
        self._session = session_for(config, health, shared)
        self._session.attach(self)
        self._nodes: dict[int, tuple[Node, ua.VariantType]] = {}  # index in writes -> node
        self._pending: dict[int, OutputValue] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self._session.state

    async def start(self) -> None:
        await self._session.acquire()
        self._task = asyncio.create_task(self._write_loop(), name=f"sink-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._session.release()

    def offer(self, assets: Sequence[str], outputs: Sequence[dict[str, OutputValue]]) -> None:
        """Take the results of one batch (asset and outputs per window, oldest first)."""
        for asset, result in zip(assets, outputs, strict=True):
            for index, write in enumerate(self._config.writes):
                if (write.asset is not None and write.asset != asset) or write.output not in result:
                    continue
                if index not in self._nodes:
                    self._health.count(f"sinks.{self.name}.skipped")
                    continue
                if index in self._pending:
                    self._health.count(f"sinks.{self.name}.superseded")
                self._pending[index] = result[write.output]
        if self._pending:
            self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            for index, value in pending.items():
                target = self._nodes.get(index)
                if target is None:
                    self._health.count(f"sinks.{self.name}.skipped")
                    continue
                await self._write(self._config.writes[index], target, value)

    async def _write(
        self, write: OpcUaWrite, target: tuple[Node, ua.VariantType], value: OutputValue
    ) -> None:
        node, kind = target
        try:
            await node.write_value(ua.DataValue(_variant(value, kind)))
        except Exception as err:  # asyncua raises many types; each failed write is counted
            self._health.count(f"sinks.{self.name}.write_errors")
            self._health.problem_once(
                f"sink-{self.name}-{write.node_id}",
                "OPC-UA write-back %s: cannot write %s to %s: %s",
                self.name,
                write.output,
                write.node_id,
                err,
            )
            return
        self._health.count(f"sinks.{self.name}.writes")

    # -------------------------------------------------------- called by the session's supervisor

    async def attached(self, client: Client) -> None:
        nodes = {}
        for index, write in enumerate(self._config.writes):
            node = client.get_node(write.node_id)
            nodes[index] = (node, await node.read_data_type_as_variant_type())
        self._nodes = nodes

    def detached(self) -> None:
        self._nodes = {}

    def silent(self, now: float) -> bool:
        return False

    async def refresh(self, client: Client) -> None:
        pass
