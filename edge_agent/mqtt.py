"""One paho-mqtt client bridged to asyncio: connect, reconnect, subscribe, publish with PUBACK.

paho runs its network loop in its own thread (``loop_start``) and reconnects by itself with
exponential backoff. Everything this class hands to asyncio crosses threads through
``call_soon_threadsafe``; every public method must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import ConfigError, NotReadyError

__all__ = ["InboundOverflow", "MqttClient", "MqttMessage", "MqttSettings", "PublishRefused"]

logger = logging.getLogger(__name__)

InboundOverflow = Literal["block", "drop_oldest", "drop_newest"]


class PublishRefused(NotReadyError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused the publish to {topic}: {reason}")
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Connection settings, resolved (secrets read) before the client is built."""

    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or a traceback
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False
    # A persistent session keeps QoS 1 messages for us at the broker while we are away.
    persistent_session: bool = False
    session_expiry_s: int = 7 * 24 * 3600
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30

    def describe(self) -> str:
        """Where this connects, for logs: never includes the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port} (MQTT {self.protocol})"


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """An inbound message. ``mid`` and ``qos`` are what a manual acknowledgement needs."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received: float  # time.monotonic() at receipt


Hook = Callable[[], Awaitable[None]]


def _send_without_delay(_client: paho.Client, _userdata: object, sock: object) -> None:
    """Turn off Nagle's algorithm on a new connection (paho leaves it on).

    Without it a QoS 1 publish sent right after another small packet (a QoS 0 ``latest``
    result, a PUBACK) waits for the broker's delayed TCP acknowledgement: tens of milliseconds
    added to results that should take a few.
    """
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included; a websocket wrapper is not
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttClient:
    """A reconnecting MQTT client. Construct, then ``await start()``; ``await stop()`` to close.

    Inbound messages go to a bounded inbox read with :meth:`messages`; when the inbox is full the
    ``overflow`` policy applies: ``block`` holds paho's network thread (back-pressure to the broker,
    right for QoS 1 inputs), ``drop_oldest``/``drop_newest`` drop and count.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        name: str,
        will: tuple[str, bytes, int, bool] | None = None,
        manual_ack: bool = False,
        max_inflight: int = 200,
        inbox_size: int = 10_000,
        overflow: InboundOverflow = "block",
    ) -> None:
        if settings.cert_file and not settings.key_file:
            raise ConfigError("a client certificate needs its key file", key="tls.key_file")
        self.settings = settings
        self.name = name
        self._will = will
        self._manual_ack = manual_ack
        self._max_inflight = max_inflight
        self._inbox_size = inbox_size
        self._overflow = overflow
        self._subscriptions: dict[str, int] = {}
        self._on_connect_hooks: list[Hook] = []
        self._pending: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._inbox: deque[MqttMessage] = deque()
        self._inbox_space = threading.Condition()
        self._wake_scheduled = False
        # PUBACKs from paho's thread, handed to the loop in batches (one wake-up for many).
        self._acks: deque[tuple[int, bool, str]] = deque()
        self._acks_scheduled = False
        self._stopping = False
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox_ready: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._subscribed: asyncio.Event | None = None
        self._suback_pending: set[int] = set()
        self._outage_started: float | None = None
        self.dropped_inbound = 0
        self.connects = 0

    # ----------------------------------------------------------------- lifecycle (loop thread)

    @property
    def connected(self) -> bool:
        return self._connected is not None and self._connected.is_set()

    def add_subscription(self, topic_filter: str, qos: int) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        self._subscriptions[topic_filter] = qos
        if self._client is not None and self.connected:
            self._client.subscribe(topic_filter, qos)

    def on_connect(self, hook: Hook) -> None:
        """Run ``hook`` on the event loop after every successful (re)connect."""
        self._on_connect_hooks.append(hook)

    async def start(self) -> None:
        """Begin connecting in the background; returns at once (the broker may be down)."""
        self._loop = asyncio.get_running_loop()
        self._inbox_ready = asyncio.Event()
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        client = self._build_client()
        self._client = client
        self._outage_started = time.monotonic()
        try:
            client.connect_async(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=(
                    False if self.settings.persistent_session else paho.MQTT_CLEAN_START_FIRST_ONLY
                ),
                properties=self._connect_properties(),
            )
        except (OSError, ValueError) as err:
            raise NotReadyError(
                f"{self.name}: cannot connect to {self.settings.describe()}"
            ) from err
        client.loop_start()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a connection; True when connected."""
        assert self._connected is not None, "start() first"
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until connected with every subscription acknowledged."""
        assert self._subscribed is not None, "start() first"
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, *, disconnect: bool = True) -> None:
        """Disconnect cleanly (no last will) and stop paho's thread. Pending publishes fail."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        with self._inbox_space:
            self._inbox_space.notify_all()
        if disconnect:
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        for future, _topic in self._pending.values():
            if not future.done():
                future.set_exception(NotReadyError(f"{self.name}: client stopped"))
        self._pending.clear()
        if self._connected is not None:
            self._connected.clear()

    # ----------------------------------------------------------------------- publish / receive

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a publish; the future completes when the broker acknowledged it (PUBACK).

        For QoS 0 it completes once paho has taken the message. paho keeps QoS 1 messages across
        reconnects and resends them, so the future may complete after an outage.
        """
        assert self._client is not None and self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            future.set_exception(
                NotReadyError(
                    f"{self.name}: publish to {topic} failed: {paho.error_string(info.rc)}"
                )
            )
        elif qos == 0:
            future.set_result(None)
        else:
            # The PUBACK callback is scheduled on this loop, so it cannot run before this line.
            self._pending[info.mid] = (future, topic)
        return future

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def ack(self, message: MqttMessage) -> None:
        """Acknowledge an inbound QoS 1 message (manual acknowledgement only)."""
        if self._manual_ack and message.qos > 0 and self._client is not None:
            self._client.ack(message.mid, message.qos)

    async def messages(self, max_batch: int = 1000) -> list[MqttMessage]:
        """Wait for inbound messages and return up to ``max_batch`` of them, oldest first."""
        assert self._inbox_ready is not None, "start() first"
        while not self._inbox:
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        batch = [self._inbox.popleft() for _ in range(min(max_batch, len(self._inbox)))]
        if self._overflow == "block":
            with self._inbox_space:
                self._inbox_space.notify_all()
        return batch

    @property
    def inbox_depth(self) -> int:
        return len(self._inbox)

    # ------------------------------------------------------------------ paho side (its thread)

    def _build_client(self) -> paho.Client:
        s = self.settings
        protocol = MQTTProtocolVersion.MQTTv5 if s.protocol == "5" else MQTTProtocolVersion.MQTTv311
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if s.protocol == "5" else not s.persistent_session,
            protocol=protocol,
            manual_ack=self._manual_ack,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls or s.ca_file:
            try:
                client.tls_set(
                    ca_certs=s.ca_file,
                    certfile=s.cert_file,
                    keyfile=s.key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as err:
                raise ConfigError(f"TLS files cannot be used: {err}", key="broker.tls") from err
        if self._will is not None:
            topic, payload, qos, retain = self._will
            client.will_set(topic, payload, qos=qos, retain=retain)
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.on_socket_open = _send_without_delay
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        return client

    def _connect_properties(self) -> Properties | None:
        if self.settings.protocol != "5" or not self.settings.persistent_session:
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        return properties

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._call(self._log_refused, str(reason_code))
            return
        mids = set()
        for topic_filter, qos in self._subscriptions.items():
            _rc, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                mids.add(mid)
        self._call(self._connected_on_loop, mids)

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(code) for code in reason_codes if code.is_failure]
        self._call(self._subscribed_on_loop, mid, failed)

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self._disconnected_on_loop, str(reason_code))

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        failed = reason_code.is_failure
        self._acks.append((mid, failed, str(reason_code) if failed else ""))
        if not self._acks_scheduled:
            self._acks_scheduled = True
            self._call(self._acks_on_loop)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        message = MqttMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            mid=msg.mid,
            received=time.monotonic(),
        )
        if len(self._inbox) >= self._inbox_size:
            if self._overflow == "block":
                with self._inbox_space:
                    while len(self._inbox) >= self._inbox_size and not self._stopping:
                        self._inbox_space.wait(0.5)
            elif self._overflow == "drop_newest":
                self.dropped_inbound += 1
                return
            else:
                self._inbox.popleft()
                self.dropped_inbound += 1
        self._inbox.append(message)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._call(self._wake_reader)

    # --------------------------------------------------------------- back on the loop's thread

    def _wake_reader(self) -> None:
        self._wake_scheduled = False
        if self._inbox_ready is not None:
            self._inbox_ready.set()

    def _log_refused(self, reason: str) -> None:
        logger.error(
            "%s: broker %s refused the connection: %s", self.name, self.settings.describe(), reason
        )

    def _connected_on_loop(self, suback_mids: set[int]) -> None:
        assert self._connected is not None and self._subscribed is not None
        self.connects += 1
        self._connected.set()
        self._suback_pending = suback_mids
        if not suback_mids:
            self._subscribed.set()
        if self._outage_started is not None:
            if self.connects == 1:
                logger.info("%s: connected to %s", self.name, self.settings.describe())
            else:
                logger.warning(
                    "%s: reconnected to %s after %.1f s",
                    self.name,
                    self.settings.describe(),
                    time.monotonic() - self._outage_started,
                )
            self._outage_started = None
        for hook in self._on_connect_hooks:
            task = asyncio.create_task(self._run_hook(hook), name=f"{self.name}-on-connect")
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook: Hook) -> None:
        try:
            await hook()
        except Exception:
            logger.exception("%s: on-connect hook failed", self.name)

    def _subscribed_on_loop(self, mid: int, failed: list[str]) -> None:
        assert self._subscribed is not None
        if failed:
            logger.error("%s: the broker refused a subscription: %s", self.name, ", ".join(failed))
        self._suback_pending.discard(mid)
        if not self._suback_pending:
            self._subscribed.set()

    def _disconnected_on_loop(self, reason: str) -> None:
        assert self._connected is not None and self._subscribed is not None
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was_connected and not self._stopping:
            self._outage_started = time.monotonic()
            logger.warning(
                "%s: lost the broker %s (%s)", self.name, self.settings.describe(), reason
            )

    def _acks_on_loop(self) -> None:
        # Cleared before draining: an ack appended meanwhile is drained here or by the next call.
        self._acks_scheduled = False
        while self._acks:
            self._acked_on_loop(*self._acks.popleft())

    def _acked_on_loop(self, mid: int, failed: bool, reason: str) -> None:
        pending = self._pending.pop(mid, None)
        if pending is None or pending[0].done():
            return
        future, topic = pending
        if failed:
            future.set_exception(PublishRefused(topic, reason))
        else:
            future.set_result(None)
