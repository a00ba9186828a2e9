"""OPC-UA source: subscribes to PLC tags through the session shared per server (edge_agent.opcua).

Each source is one subscription with a monitored item per tag; the session's supervisor creates
it again after every reconnect, and again when the source's watchdog finds it silent. The
subscription asks the server for keep-alives well within the watchdog's time, so a quiet plant
(no value changes) still shows a live subscription and only a dead one is silent.
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
from asyncua.ua.status_codes import StatusCodes
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
# What the server answers for a browse path it does not have.
_NOT_ON_SERVER = {
    StatusCodes.BadNoMatch,
    StatusCodes.BadNodeIdUnknown,
    StatusCodes.BadBrowseNameInvalid,
}
# Keep-alive period as a share of watchdog_s. Above 2/3 so that asyncua's own stale-subscription
# check (1.5 keep-alive periods) never acts before the watchdog, which counts and logs; below 1
# so that a quiet plant's keep-alives arrive with a quarter of watchdog_s to spare.
KEEPALIVE_SHARE = 0.75


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
        self._subscribed_at = time.monotonic()
        self._silent_after = config.watchdog_s
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
        subscription = self._subscription
        if subscription is None or self.watchdog_s <= 0:  # every tag left out, or watchdog off
            return False
        # Every publish counts, data or keep-alive: silence means the server stopped serving
        # this subscription, not that the plant is quiet.
        last = max(subscription.last_publish_at or 0.0, self._subscribed_at)
        return now - last > self._silent_after

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
        subscription = await client.create_subscription(self._parameters(client), self)
        self._silent_after = self._watchdog_time(subscription.parameters)
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
        self._subscribed_at = time.monotonic()
        self._ready.set()

    def _parameters(self, client: Client) -> ua.CreateSubscriptionParameters:
        config = self._config
        parameters = ua.CreateSubscriptionParameters()
        parameters.RequestedPublishingInterval = config.publishing_interval_ms
        if config.watchdog_s > 0:
            keepalive_ms = config.watchdog_s * 1000 * KEEPALIVE_SHARE
            keepalive = max(1, math.floor(keepalive_ms / config.publishing_interval_ms))
        else:  # no watchdog: asyncua's default, a keep-alive at 3/4 of the session timeout
            keepalive = client.get_keepalive_count(config.publishing_interval_ms)
        parameters.RequestedMaxKeepAliveCount = keepalive
        # The server may drop a subscription after this many intervals without a publish
        # request; OPC-UA wants at least three keep-alive periods.
        parameters.RequestedLifetimeCount = max(10_000, 3 * keepalive)
        parameters.MaxNotificationsPerPublish = 10_000
        parameters.PublishingEnabled = True
        parameters.Priority = 0
        return parameters

    def _watchdog_time(self, parameters: Any) -> float:
        """Silence that means a dead subscription, given the keep-alive the server agreed to."""
        watchdog_s = self._config.watchdog_s
        if watchdog_s <= 0:
            return 0.0
        # asyncua asks again with its own keep-alive when a server revises the interval.
        keepalive_s = float(
            parameters.RequestedPublishingInterval * parameters.RequestedMaxKeepAliveCount / 1000
        )
        if keepalive_s <= watchdog_s * KEEPALIVE_SHARE:
            return watchdog_s
        self._health.problem_once(
            f"opcua-keepalive-{self.name}",
            "OPC-UA %s: the server sends keep-alives every %.0f s, so the watchdog waits %.0f s "
            "rather than watchdog_s = %.0f s",
            self.name,
            keepalive_s,
            keepalive_s / KEEPALIVE_SHARE,
            watchdog_s,
        )
        return keepalive_s / KEEPALIVE_SHARE

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
            if err.code not in _NOT_ON_SERVER:
                raise  # a session in trouble, not a wrong path: the supervisor reconnects
            self._left_out(
                tag,
                f"browse path {tag.browse_path!r} is not on the server ({err}); give it as "
                "ns:Name segments from the Objects folder",
            )
            return None

    # ------------------------------------------------------------- asyncua's handler interface

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """Called by asyncua for each changed value; queues it as a one-sample reading."""
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
