"""MQTT sink: publishes outbox records at their QoS and confirms each on the broker's PUBACK."""

from __future__ import annotations

import asyncio

from edge_agent.mqtt import MqttClient

__all__ = ["MqttSink"]


class MqttSink:
    """Delivers over the agent's uplink connection (shared with status and control)."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client

    @property
    def ready(self) -> bool:
        return self._client.connected

    async def wait_ready(self) -> None:
        while not await self._client.wait_connected(3600):
            pass

    def send(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> asyncio.Future[None]:
        return self._client.publish(topic, payload, qos=qos, retain=retain)
