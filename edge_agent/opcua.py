"""One OPC-UA client session per server, shared by every source and sink that uses the server.

PLCs allow only a few sessions, so every source or sink naming one server URL shares one
:class:`OpcUaSession`. Its supervisor task owns the connection: it connects, lets each user
create its subscriptions or resolve its nodes, watches the link and the data, and on a loss
reconnects with jittered exponential backoff and lets the users set up again. An outage is logged
once when it starts and once when it ends, with its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.config import read_secret
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from edge_agent.config import OpcUaEndpoint
    from edge_agent.health import Health

__all__ = ["OpcUaSession", "SessionUser", "session_for"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.25
# At most one warning per user this often about subscriptions the watchdog re-created.
WATCHDOG_LOG_S = 600.0


def session_for(config: OpcUaEndpoint, health: Health, shared: dict[str, Any]) -> OpcUaSession:
    """The agent's session for ``config.url``: made by the first user, shared by the others."""
    sessions: dict[str, OpcUaSession] = shared.setdefault("opcua_sessions", {})
    session = sessions.get(config.url)
    if session is None:
        session = sessions[config.url] = OpcUaSession(config, health)
    else:
        session.check_same_server(config)
    return session


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}", key=key) from err


def _load_certificate(path: Path, key: str) -> x509.Certificate:
    """A certificate file (PEM or DER), or a ConfigError naming ``key`` and the file.

    Read when the session is made, so that a wrong path stops the agent with a config error
    instead of failing every connect as if the server were down.
    """
    data = _read(path, key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as err:
        raise ConfigError(
            f"{path} is not an X.509 certificate (PEM or DER): {err}", key=key
        ) from err


def _load_private_key(path: Path, key: str) -> PrivateKeyTypes:
    """An unencrypted private key file (PEM or DER), or a ConfigError naming ``key``."""
    data = _read(path, key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as err:  # TypeError: the key is encrypted
        raise ConfigError(
            f"{path} is not an unencrypted private key (PEM or DER): {err}", key=key
        ) from err


def _public(item: x509.Certificate | PrivateKeyTypes) -> bytes:
    return item.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class SessionUser(Protocol):
    """A source or sink that works through a shared session. The supervisor calls these."""

    name: str
    watchdog_s: float  # 0: never silent

    async def attached(self, client: Client) -> None:
        """A session is up: create subscriptions, resolve nodes. Raising ends the session."""
        ...

    def detached(self) -> None:
        """The session is gone; forget everything that belonged to it."""
        ...

    def silent(self, now: float) -> bool:
        """True when the server sent this user nothing, not even a keep-alive, for longer than
        ``watchdog_s`` (monotonic ``now``): its subscription is dead, the plant is not just quiet.
        """
        ...

    async def refresh(self, client: Client) -> None:
        """The server answers but this user got no data: create its subscription again."""
        ...


class OpcUaSession:
    """One client session to one OPC-UA server, shared by the sources and sinks that use it.

    ``acquire`` is awaited by each user's ``start``; the first starts the supervisor task.
    ``release`` is awaited by each ``stop``; the last one stops the task and closes the session.
    All methods run on the event loop's thread.
    """

    def __init__(self, config: OpcUaEndpoint, health: Health) -> None:
        self.url = config.url
        self._config = config
        self._health = health
        self._users_list: list[SessionUser] = []
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._watchdog_logged: dict[str, tuple[float, int]] = {}  # user -> (last warning, since)
        self.state = "connecting"
        security = config.security
        self._user_identity: tuple[x509.Certificate, PrivateKeyTypes] | None = None
        if security is not None:
            what = f"{config.name}: security"
            for path, name in (
                (security.certificate, "certificate"),
                (security.server_certificate, "server_certificate"),
            ):
                if path is not None:
                    _load_certificate(path, f"{what}.{name}")
            if security.private_key is not None:
                _load_private_key(security.private_key, f"{what}.private_key")
            if security.user_certificate is not None and security.user_private_key is not None:
                certificate = _load_certificate(
                    security.user_certificate, f"{what}.user_certificate"
                )
                private_key = _load_private_key(
                    security.user_private_key, f"{what}.user_private_key"
                )
                if _public(certificate) != _public(private_key):
                    raise ConfigError(
                        f"{security.user_private_key} is not the key of "
                        f"{security.user_certificate}",
                        key=f"{what}.user_private_key",
                    )
                self._user_identity = (certificate, private_key)
        self._password = (
            read_secret(
                env=security.password_env,
                credential=security.password_credential,
                what=f"{config.name}: security.password",
            )
            if security is not None
            else None
        )

    def attach(self, user: SessionUser) -> None:
        self._users_list.append(user)

    def check_same_server(self, config: OpcUaEndpoint) -> None:
        """Users sharing a session must agree on how to reach the server."""
        mine = self._config
        if (config.security, config.reconnect_min_s, config.reconnect_max_s) != (
            mine.security,
            mine.reconnect_min_s,
            mine.reconnect_max_s,
        ):
            raise ConfigError(
                f"{mine.name} and {config.name} use {self.url} with different security or "
                "reconnect settings; one server has one session, so give them the same",
                key=config.name,
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
        if self._user_identity is not None:
            # asyncua sends an X.509 identity token, signed with this key, when these are set.
            client.user_certificate, client.user_private_key = self._user_identity
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
                for user in self._users_list:
                    await user.attached(client)
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
            for user in self._users_list:
                user.detached()
            await self._close()
            if outage_started is None:
                outage_started = time.monotonic()
                if first:
                    logger.warning("OPC-UA server %s unreachable (%s); retrying", self.url, reason)
                else:
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
            for user in self._users_list:
                if not user.silent(now):
                    continue
                self._health.count(f"opcua.watchdog.{user.name}")
                try:
                    await asyncio.wait_for(
                        client.nodes.server_state.read_value(), CONNECT_TIMEOUT_S
                    )
                except Exception as err:  # any failure here means the session is unusable
                    return f"no data for {user.name} and no answer to a read: {err}"
                self._report_dead_subscription(user, now)
                await user.refresh(client)

    def _report_dead_subscription(self, user: SessionUser, now: float) -> None:
        """Warn of a re-created subscription, at most once per WATCHDOG_LOG_S per user: a server
        that keeps dropping subscriptions must not flood the log (the counter has every one)."""
        last, suppressed = self._watchdog_logged.get(user.name, (-math.inf, 0))
        if now - last < WATCHDOG_LOG_S:
            self._watchdog_logged[user.name] = (last, suppressed + 1)
            return
        self._watchdog_logged[user.name] = (now, 0)
        logger.warning(
            "OPC-UA %s: neither data nor keep-alive for %.0f s while the server answers; "
            "re-creating the subscription%s",
            user.name,
            user.watchdog_s,
            f" ({suppressed} more times since the last report)" if suppressed else "",
        )
