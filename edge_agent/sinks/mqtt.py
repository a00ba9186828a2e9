"""MQTT sink: publishes outbox records at their QoS and confirms each on the broker's PUBACK."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from edge_agent.buffers.base import OutboxRecord
from edge_agent.errors import NotReadyError, PartialWriteError
from edge_agent.mqtt import MqttClient

__all__ = ["MqttSink"]


class MqttSink:
    """Delivers records over the agent's uplink connection (shared with status and control)."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client

    @property
    def ready(self) -> bool:
        return self._client.connected

    async def wait_ready(self) -> None:
        while not await self._client.wait_connected(3600):
            pass

    async def write(self, records: Sequence[OutboxRecord]) -> None:
        futures = [
            self._client.publish(r.topic, r.payload, qos=r.qos, retain=r.retain) for r in records
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r, result in zip(records, results, strict=True) if result is not None]
        if failed:
            accepted = [r.seq for r, result in zip(records, results, strict=True) if result is None]
            first = next(result for result in results if result is not None)
            raise PartialWriteError(
                f"{len(failed)} of {len(records)} records not confirmed: {first}", accepted
            ) from (first if isinstance(first, NotReadyError) else None)
