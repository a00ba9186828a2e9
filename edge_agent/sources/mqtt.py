"""MQTT source: subscribes to sensor topics and decodes each message into a reading."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edge_agent.codecs import build_codec
from edge_agent.errors import InputRejected
from edge_agent.mqtt import MqttClient, MqttMessage
from edge_agent.sources.base import Reading

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, MqttSourceConfig
    from edge_agent.health import Health

__all__ = ["MqttSource"]


class MqttSource:
    """Readings from MQTT topics. QoS 1 inputs are acknowledged to the broker only once the
    results built from them are durable (manual acknowledgement), and use a persistent session so
    the broker keeps what arrives while the agent is down."""

    def __init__(
        self, config: MqttSourceConfig, agent: AgentConfig, health: Health, *, once: bool = False
    ) -> None:
        self.name = config.name
        self._config = config
        self._health = health
        self._codec = build_codec(config.codec)
        broker = config.broker or agent.broker
        # ``once`` must not take over the running agent's session (same client id) or its queue.
        durable = config.qos == 1 and not once
        settings = broker.settings(
            device_id=agent.device.id,
            role=f"once-{config.name}" if once else f"source-{config.name}",
            persistent_session=durable,
        )
        self._client = MqttClient(
            settings,
            name=f"source {config.name}",
            manual_ack=durable,
            overflow="block" if durable else "drop_oldest",
        )
        for topic in config.topics:
            self._client.add_subscription(topic, config.qos)
        health.gauge(f"queue.source.{self.name}", lambda: self._client.inbox_depth)
        health.gauge(f"drops.source.{self.name}", lambda: self._client.dropped_inbound)

    @property
    def state(self) -> str:
        return "connected" if self._client.connected else "reconnecting"

    async def start(self) -> None:
        await self._client.start()

    async def wait_ready(self, timeout: float) -> bool:
        return await self._client.wait_subscribed(timeout)

    async def stop(self) -> None:
        await self._client.stop()

    async def readings(self) -> AsyncIterator[list[Reading]]:
        while True:
            batch = await self._client.messages()
            self._health.count(f"source.{self.name}.messages", len(batch))
            readings = []
            for message in batch:
                try:
                    readings.append(self._decode(message))
                except InputRejected as rejected:
                    self._health.reject(rejected.reason, f"topic {message.topic}", rejected.detail)
                    self._client.ack(message)  # a resend would be refused again
            if readings:
                yield readings

    def _decode(self, message: MqttMessage) -> Reading:
        limit = self._config.max_payload_bytes
        if len(message.payload) > limit:
            raise InputRejected(
                "oversized", f"payload of {len(message.payload)} bytes exceeds {limit} bytes"
            )
        samples = self._codec.decode(message.payload, message.topic)
        asset = self._config.asset
        if asset is None:
            levels = message.topic.split("/")
            level = self._config.asset_level
            assert level is not None  # the config requires asset or asset_level
            if level >= len(levels) or not levels[level]:
                raise InputRejected("no_asset", f"topic has no level {level} to name the asset")
            asset = levels[level]
        client = self._client
        return Reading(
            self.name, asset, f"topic {message.topic}", samples, ack=lambda: client.ack(message)
        )
