"""OPC-UA source: subscribes to PLC tags through the session shared per server (edge_agent.opcua).

Each source is one subscription with a monitored item per tag; the session's supervisor creates
it again after every reconnect, and again when the source's watchdog finds it silent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaStatusCodeError

from edge_agent.opcua import session_for
from edge_agent.sources.base import Quality, Reading, Sample

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, OpcUaSourceConfig, OpcUaTagConfig
    from edge_agent.health import Health

__all__ = ["OpcUaSource", "quality_of"]

logger = logging.getLogger(__name__)

# Samples held between the subscription and the agent before the oldest are dropped (counted).
QUEUE_LIMIT = 100_000


def quality_of(status: ua.StatusCode | None) -> Quality:
    """OPC-UA status code severity (the top two bits) to a quality flag."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None or value.year < 1700:  # OPC-UA's "no time" is 1601-01-01
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


class OpcUaSource:
    """Readings from OPC-UA tags of one asset, through the session shared per server URL."""

    def __init__(
        self,
        config: OpcUaSourceConfig,
        agent: AgentConfig,
        health: Health,
        shared: dict[str, Any],
    ) -> None:
        self.name = config.name
        self.asset = config.asset
        self.watchdog_s = config.watchdog_s
        self._config = config
        self._health = health
        session = session_for(config, health, shared)
        session.attach(self)
        self._session = session
        self._tags: dict[ua.NodeId, OpcUaTagConfig] = {}
        self._queue: deque[Reading] = deque()
        self._ready = asyncio.Event()
        self._has_data = asyncio.Event()
        self._subscription: Any = None
        self._last_data = time.monotonic()
        self._unresolved: set[str] = set()  # tags already reported as left out
        self.dropped = 0
        health.gauge(f"queue.source.{self.name}", lambda: len(self._queue))
        health.gauge(f"drops.source.{self.name}", lambda: self.dropped)

    @property
    def state(self) -> str:
        return self._session.state

    async def start(self) -> None:
        await self._session.acquire()

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        await self._session.release()

    async def readings(self) -> AsyncIterator[list[Reading]]:
        while True:
            while not self._queue:
                self._has_data.clear()
                await self._has_data.wait()
            # One publish delivers each tag's queued values in turn; time order lets the windows
            # tell a late sample from a tag that simply came later in the same message.
            batch = sorted(self._queue, key=lambda reading: reading.samples[0].ts)
            self._queue.clear()
            yield batch

    def silent(self, now: float) -> bool:
        if self._subscription is None:  # every tag left out: nothing to watch
            return False
        return self.watchdog_s > 0 and now - self._last_data > self.watchdog_s

    # -------------------------------------------------------- called by the session's supervisor

    async def attached(self, client: Client) -> None:
        """Create this source's subscription and monitored items on a fresh session.

        A tag the server does not have is left out (logged once, counted) and the others are
        served: one typo in a tag list must not stop a whole machine's data.
        """
        config = self._config
        resolved: list[tuple[Node, OpcUaTagConfig]] = []
        for tag in config.tags:
            node = await self._resolve(client, tag)
            if node is not None:
                resolved.append((node, tag))
        # Known before the items exist: the server's first values may come before the answer.
        self._tags = {node.nodeid: tag for node, tag in resolved}
        if not resolved:
            self._ready.set()
            return
        subscription = await client.create_subscription(config.publishing_interval_ms, self)
        requests = []
        for handle, (node, tag) in enumerate(resolved):
            parameters = ua.MonitoringParameters()
            parameters.ClientHandle = handle
            parameters.SamplingInterval = (
                tag.sampling_interval_ms
                if tag.sampling_interval_ms is not None
                else config.sampling_interval_ms
            )
            parameters.QueueSize = config.queue_size
            parameters.DiscardOldest = True
            deadband = tag.deadband if tag.deadband is not None else config.deadband
            if deadband:
                parameters.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=2 if tag.deadband_type == "percent" else 1,
                    DeadbandValue=deadband,
                )
            item = ua.MonitoredItemCreateRequest()
            item.ItemToMonitor = ua.ReadValueId(NodeId=node.nodeid, AttributeId=AttributeIds.Value)
            item.MonitoringMode = ua.MonitoringMode.Reporting
            item.RequestedParameters = parameters
            requests.append(item)
        results = await subscription.create_monitored_items(requests)
        for (node, tag), result in zip(resolved, results, strict=True):
            if isinstance(result, ua.StatusCode):
                del self._tags[node.nodeid]
                where = tag.node_id or tag.browse_path
                self._left_out(tag, f"the server refused to monitor {where!r}: {result.name}")
        self._subscription = subscription
        self._last_data = time.monotonic()
        self._ready.set()

    def _left_out(self, tag: OpcUaTagConfig, why: str) -> None:
        """Log a tag the server cannot serve once (per agent run), with what to fix."""
        if tag.name in self._unresolved:
            return
        self._unresolved.add(tag.name)
        self._health.count(f"opcua.unresolved.{self.name}")
        logger.error(
            "OPC-UA source %s: tag %s left out, %s; the other tags are served. "
            "Fix sources.%s.tags and restart",
            self.name,
            tag.name,
            why,
            self.name,
        )

    async def refresh(self, client: Client) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.delete()
            except Exception as err:  # the old subscription may already be gone on the server
                logger.debug("OPC-UA %s: deleting the old subscription: %s", self.name, err)
        await self.attached(client)

    def detached(self) -> None:
        self._subscription = None
        self._ready.clear()

    async def _resolve(self, client: Client, tag: OpcUaTagConfig) -> Node | None:
        if tag.node_id is not None:
            return client.get_node(tag.node_id)
        assert tag.browse_path is not None
        try:
            return await client.nodes.objects.get_child(tag.browse_path.split("/"))
        except UaStatusCodeError as err:
            self._left_out(
                tag,
                f"browse path {tag.browse_path!r} is not on the server ({err}); give it as "
                "ns:Name segments from the Objects folder",
            )
            return None

    # ------------------------------------------------------------- asyncua's handler interface

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """Called by asyncua for each changed value; queues it as a one-sample reading."""
        self._last_data = time.monotonic()
        tag = self._tags.get(node.nodeid)
        if tag is None:
            return
        value: ua.DataValue = data.monitored_item.Value
        origin = f"node {node.nodeid.to_string()}"
        quality = quality_of(value.StatusCode)
        number = _number(val)
        if number is None and quality is not Quality.GOOD:
            # A device that cannot read its sensor reports Bad, often with no value at all: that
            # is a bad-quality sample (counted, never fed to a window), not malformed input.
            number = math.nan
        if number is None:
            self._health.reject(
                "not_a_number", origin, f"tag {tag.name} is {type(val).__name__} {str(val)[:40]!r}"
            )
            return
        ts = (
            _epoch(value.SourceTimestamp)
            if self._config.timestamp == "source"
            else _epoch(value.ServerTimestamp)
        )
        sample = Sample(tag.name, number, ts or time.time(), quality)
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(Reading(self.name, self.asset, origin, [sample]))
        self._health.count(f"source.{self.name}.samples")
        self._has_data.set()

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription; the supervisor's watch loop notices the session."""
        logger.debug("OPC-UA %s: subscription status %s", self.name, status)
