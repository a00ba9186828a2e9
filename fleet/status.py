"""Reading the devices' retained status messages from the broker."""

from __future__ import annotations

import asyncio
import time

from edge_agent.contracts.payloads import PayloadError, StatusPayload, decode
from edge_agent.contracts.topics import fleet_filter, parse_topic
from edge_agent.mqtt import MqttClient, MqttSettings

__all__ = ["collect_status"]


async def collect_status(
    settings: MqttSettings, prefix: str, *, quiet_s: float = 0.5, timeout_s: float = 5.0
) -> tuple[dict[tuple[str, str], StatusPayload], list[str]]:
    """The retained status of every device under ``prefix``, keyed by (site, device).

    Retained messages arrive right after the subscription; collection ends once none came for
    ``quiet_s``. Returns the statuses and a list of problems (undecodable payloads).
    """
    client = MqttClient(settings, name="fleet")
    client.add_subscription(fleet_filter(prefix, "status"), 1)
    await client.start()
    try:
        if not await client.wait_connected(timeout_s):
            raise ConnectionError(f"cannot reach the broker {settings.describe()}")
        statuses: dict[tuple[str, str], StatusPayload] = {}
        problems: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                batch = await asyncio.wait_for(client.messages(), quiet_s)
            except TimeoutError:
                break
            for message in batch:
                parts = parse_topic(prefix, message.topic)
                if parts is None or not message.payload:
                    continue
                try:
                    statuses[(parts.site, parts.device)] = decode(StatusPayload, message.payload)
                except PayloadError as err:
                    problems.append(f"{message.topic}: {err}")
        return statuses, problems
    finally:
        await client.stop()
