"""OPC-UA source: subscribes to PLC tags through one shared session per server, and keeps it up.

PLCs allow only a few sessions, so every source reading one server URL shares one
:class:`OpcUaSession`. Its supervisor task owns the connection: it connects, creates each
source's subscription, watches the link and the data, and on a loss reconnects with jittered
exponential backoff and creates the subscriptions again. An outage is logged once when it starts
and once when it ends, with its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaStatusCodeError

from edge_agent.config import read_secret
from edge_agent.errors import ConfigError
from edge_agent.sources.base import Quality, Reading, Sample

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, OpcUaSourceConfig, OpcUaTagConfig
    from edge_agent.health import Health

__all__ = ["OpcUaSession", "OpcUaSource", "quality_of"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.25
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


class OpcUaSession:
    """One client session to one OPC-UA server, shared by the sources that read it.

    ``acquire`` is awaited by each source's ``start``; the first starts the supervisor task.
    ``release`` is awaited by each ``stop``; the last one stops the task and closes the session.
    All methods run on the event loop's thread.
    """

    def __init__(self, config: OpcUaSourceConfig, health: Health) -> None:
        self.url = config.url
        self._config = config
        self._health = health
        self._sources: list[OpcUaSource] = []
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self.state = "connecting"
        security = config.security
        self._password = (
            read_secret(
                env=security.password_env,
                credential=security.password_credential,
                what="sources.security.password",
            )
            if security is not None
            else None
        )

    def attach(self, source: OpcUaSource) -> None:
        self._sources.append(source)

    def check_same_server(self, config: OpcUaSourceConfig) -> None:
        """Sources sharing a session must agree on how to reach the server."""
        mine = self._config
        if (config.security, config.reconnect_min_s, config.reconnect_max_s) != (
            mine.security,
            mine.reconnect_min_s,
            mine.reconnect_max_s,
        ):
            raise ConfigError(
                f"sources {mine.name} and {config.name} read {self.url} with different security "
                "or reconnect settings; one server has one session, so give them the same",
                key=f"sources.{config.name}",
            )

    async def acquire(self) -> None:
        self._users += 1
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"opcua {self.url}")

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._close()
        self.state = "stopped"

    # ------------------------------------------------------------------------- supervisor

    def _new_client(self) -> Client:
        config = self._config
        client = Client(config.url, timeout=CONNECT_TIMEOUT_S)
        client.name = f"edge-agent {config.name}"
        security = config.security
        if security is not None and security.username is not None:
            client.set_user(security.username)
            if self._password is not None:
                client.set_password(self._password)
        return client

    async def _connect(self) -> Client:
        client = self._new_client()
        security = self._config.security
        if security is not None and security.policy == "Basic256Sha256":
            assert security.certificate is not None and security.private_key is not None
            mode = (
                ua.MessageSecurityMode.SignAndEncrypt
                if security.mode == "SignAndEncrypt"
                else ua.MessageSecurityMode.Sign
            )
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(security.certificate),
                private_key=str(security.private_key),
                server_certificate=(
                    str(security.server_certificate) if security.server_certificate else None
                ),
                mode=mode,
            )
        self._client = client
        await client.connect()
        return client

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), CONNECT_TIMEOUT_S)
        except Exception as err:  # a dead peer cannot be told goodbye; nothing else to do
            logger.debug("OPC-UA %s: disconnect failed: %s", self.url, err)

    async def _supervise(self) -> None:
        """Connect, subscribe, watch; on any loss, back off with jitter and do it all again."""
        config = self._config
        attempt = 0
        outage_started: float | None = None
        first = True
        while True:
            try:
                client = await self._connect()
                for source in self._sources:
                    await source.subscribe(client)
                self.state = "connected"
                if outage_started is not None:
                    logger.warning(
                        "OPC-UA server %s is back after %.1f s; subscriptions re-created",
                        self.url,
                        time.monotonic() - outage_started,
                    )
                    self._health.count(f"opcua.outages.{config.name}")
                    outage_started = None
                elif first:
                    logger.info("OPC-UA server %s connected", self.url)
                first = False
                attempt = 0
                reason = await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the supervisor turns every failure into a retry
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            for source in self._sources:
                source.unsubscribed()
            await self._close()
            if outage_started is None:
                outage_started = time.monotonic()
                logger.warning("OPC-UA server %s lost (%s); reconnecting", self.url, reason)
            self.state = "reconnecting"
            self._health.count(f"opcua.reconnects.{config.name}")
            # Full jitter keeps a plant's agents from reconnecting in lockstep after a PLC reboot.
            ceiling = min(config.reconnect_max_s, config.reconnect_min_s * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _watch(self, client: Client) -> str:
        """Return why the session must be rebuilt: the link dropped, or a subscription is silent
        and a direct read says the server is gone (a live server gets the subscription again)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if client.state is not UaClientState.CONNECTED:
                return "connection lost"
            now = time.monotonic()
            for source in self._sources:
                if not source.silent(now):
                    continue
                self._health.count(f"opcua.watchdog.{source.name}")
                try:
                    await asyncio.wait_for(
                        client.nodes.server_state.read_value(), CONNECT_TIMEOUT_S
                    )
                except Exception as err:  # any failure here means the session is unusable
                    return f"no data from {source.name} and no answer to a read: {err}"
                logger.warning(
                    "OPC-UA %s: no data for %.0f s; re-creating the subscription",
                    source.name,
                    source.watchdog_s,
                )
                await source.resubscribe(client)


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
        sessions: dict[str, OpcUaSession] = shared.setdefault("opcua_sessions", {})
        session = sessions.get(config.url)
        if session is None:
            session = sessions[config.url] = OpcUaSession(config, health)
        else:
            session.check_same_server(config)
        session.attach(self)
        self._session = session
        self._tags: dict[ua.NodeId, OpcUaTagConfig] = {}
        self._queue: deque[Reading] = deque()
        self._ready = asyncio.Event()
        self._has_data = asyncio.Event()
        self._subscription: Any = None
        self._last_data = time.monotonic()
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
        return self.watchdog_s > 0 and now - self._last_data > self.watchdog_s

    # -------------------------------------------------------- called by the session's supervisor

    async def subscribe(self, client: Client) -> None:
        """Create this source's subscription and monitored items on a fresh session."""
        config = self._config
        nodes = [await self._resolve(client, tag) for tag in config.tags]
        self._tags = {node.nodeid: tag for node, tag in zip(nodes, config.tags, strict=True)}
        subscription = await client.create_subscription(config.publishing_interval_ms, self)
        requests = []
        for handle, (node, tag) in enumerate(zip(nodes, config.tags, strict=True)):
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
        for tag, result in zip(config.tags, results, strict=True):
            if isinstance(result, ua.StatusCode):
                raise ConfigError(
                    f"the server refused to monitor tag {tag.name}: {result.name}",
                    key=f"sources.{self.name}.tags",
                )
        self._subscription = subscription
        self._last_data = time.monotonic()
        self._ready.set()

    async def resubscribe(self, client: Client) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.delete()
            except Exception as err:  # the old subscription may already be gone on the server
                logger.debug("OPC-UA %s: deleting the old subscription: %s", self.name, err)
        await self.subscribe(client)

    def unsubscribed(self) -> None:
        self._subscription = None
        self._ready.clear()

    async def _resolve(self, client: Client, tag: OpcUaTagConfig) -> Node:
        if tag.node_id is not None:
            return client.get_node(tag.node_id)
        assert tag.browse_path is not None
        try:
            return await client.nodes.objects.get_child(tag.browse_path.split("/"))
        except UaStatusCodeError as err:
            raise ConfigError(
                f"browse path {tag.browse_path!r} of tag {tag.name} is not on the server "
                f"({err}); give it as ns:Name segments from the Objects folder",
                key=f"sources.{self.name}.tags",
            ) from err

    # ------------------------------------------------------------- asyncua's handler interface

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """Called by asyncua for each changed value; queues it as a one-sample reading."""
        self._last_data = time.monotonic()
        tag = self._tags.get(node.nodeid)
        if tag is None:
            return
        value: ua.DataValue = data.monitored_item.Value
        origin = f"node {node.nodeid.to_string()}"
        number = _number(val)
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
        sample = Sample(tag.name, number, ts or time.time(), quality_of(value.StatusCode))
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(Reading(self.name, self.asset, origin, [sample]))
        self._health.count(f"source.{self.name}.samples")
        self._has_data.set()

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription; the supervisor's watch loop notices the session."""
        logger.debug("OPC-UA %s: subscription status %s", self.name, status)
