"""A real asyncua OPC-UA server, in process on a free port, built from a declared tag table.

It runs on its own event loop in a background thread so that synchronous tests and agent
subprocesses can use it alike; ``write`` changes a tag's value as a PLC would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asyncua import ua
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.mosquitto import free_port, port_open

T = TypeVar("T")

NAMESPACE = "urn:edge-inference:test"


class _Users(UserManager):
    """Accepts exactly the configured user names and passwords, and user certificates (DER)."""

    def __init__(self, users: dict[str, str], certificates: list[bytes]) -> None:
        self.users = users
        self.certificates = certificates

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        # asyncua passes the X.509 identity token's certificate here, or else the channel's
        # application certificate: only a listed user certificate may match.
        if username is None and certificate in self.certificates:
            return User(role=UserRole.User)
        return None


def make_certificate(directory: Path, name: str, *, server: bool) -> tuple[Path, Path]:
    """A self-signed certificate (DER) and key (PEM) for a test server or client."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.der", directory / f"{name}.pem"
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    asyncio.run(
        setup_self_signed_certificate(
            key,
            cert,
            f"urn:edge-inference:test:{name}",
            "127.0.0.1",
            [usage],
            {"commonName": name, "organizationName": "edge-inference tests"},
        )
    )
    return cert, key


@dataclass(frozen=True)
class Tag:
    """A variable under the object ``folder``; its node id is ``ns=<idx>;s=<folder>.<name>``."""

    name: str
    initial: float = 0.0
    folder: str = "Machine"


class OpcUaTestServer:
    def __init__(
        self,
        tags: list[Tag],
        *,
        port: int | None = None,
        secured: tuple[Path, Path] | None = None,
        users: dict[str, str] | None = None,
        user_certificates: list[Path] | None = None,
    ) -> None:
        """``secured`` (certificate, private key) offers only Basic256Sha256 SignAndEncrypt;
        ``users`` (name -> password) and ``user_certificates`` (X.509 user identities) then
        accept only those users, no anonymous client."""
        self.tags = tags
        self.secured = secured
        self.users = users
        self.user_certificates = user_certificates
        self.port = port or free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/edge/"
        self.namespace_index = 2
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opcua-server", daemon=True
        )
        self._thread.start()
        self._server: Server | None = None
        self._nodes: dict[str, Any] = {}
        logging.getLogger("asyncua").setLevel(logging.WARNING)

    def node_id(self, tag: str) -> str:
        folder = next(t.folder for t in self.tags if t.name == tag)
        return f"ns={self.namespace_index};s={folder}.{tag}"

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        users, user_certificates = self.users, self.user_certificates
        checked = users is not None or user_certificates is not None
        certificates = [
            # asyncua leaves der_from_x509 unannotated
            uacrypto.der_from_x509(await uacrypto.load_certificate(str(path)))  # type: ignore[no-untyped-call]
            for path in user_certificates or []
        ]
        server = Server(user_manager=_Users(users or {}, certificates) if checked else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-inference test PLC")
        if self.secured is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            certificate, key = self.secured
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(certificate))
            await server.load_private_key(str(key))
        tokens: list[type] = []
        if users is not None:
            tokens.append(ua.UserNameIdentityToken)
        if user_certificates is not None:
            tokens.append(ua.X509IdentityToken)
        if tokens:
            server.set_identity_tokens(tokens)
        self.namespace_index = await server.register_namespace(NAMESPACE)
        folders: dict[str, Any] = {}
        for tag in self.tags:
            if tag.folder not in folders:
                # Browse names in the server's own namespace, as a PLC's are.
                folders[tag.folder] = await server.nodes.objects.add_object(
                    # asyncua annotates NodeId with its int/str subclasses (String, Int16)
                    ua.NodeId(tag.folder, self.namespace_index),  # type: ignore[arg-type]
                    ua.QualifiedName(tag.folder, self.namespace_index),
                )
            node = await folders[tag.folder].add_variable(
                # asyncua annotates NodeId with its int/str subclasses (String, Int16)
                ua.NodeId(f"{tag.folder}.{tag.name}", self.namespace_index),  # type: ignore[arg-type]
                ua.QualifiedName(tag.name, self.namespace_index),
                ua.Variant(float(tag.initial), ua.VariantType.Double),
            )
            await node.set_writable()
            self._nodes[tag.name] = node
        await server.start()
        self._server = server

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
            self._nodes.clear()

    def start(self) -> None:
        self._call(self._start())
        assert port_open(self.port)

    def stop(self) -> None:
        self._call(self._stop())

    def write(
        self,
        tag: str,
        value: float | None,
        status: ua.StatusCode | None = None,
        ts: float | None = None,
    ) -> None:
        """Write a value (None: no value, as a PLC reports a failed sensor), with ``ts`` (epoch
        seconds) as its source timestamp when given."""

        async def write() -> None:
            variant = (
                ua.Variant(float(value), ua.VariantType.Double)
                if value is not None
                else ua.Variant()
            )
            source_ts = dt.datetime.fromtimestamp(ts, dt.UTC) if ts is not None else None
            # asyncua annotates StatusCode with UInt32 and DataValue with DateTime, its own
            # int and datetime subclasses; plain int and datetime are what it takes at runtime
            data = ua.DataValue(
                variant,
                StatusCode=status or ua.StatusCode(StatusCodes.Good),  # type: ignore[arg-type]
                SourceTimestamp=source_ts,  # type: ignore[arg-type]
            )
            await self._nodes[tag].write_value(data)

        self._call(write())

    def read(self, tag: str) -> float:
        async def read() -> float:
            return float(await self._nodes[tag].read_value())

        return self._call(read())

    def sessions(self) -> int:
        """Client sessions open on the server now (created and not yet closed)."""

        async def count() -> int:
            assert self._server is not None
            return len(self._server.iserver._external_sessions)

        return self._call(count())

    def subscriptions(self) -> list[int]:
        """The ids of the subscriptions the server keeps now, of every session."""

        async def ids() -> list[int]:
            assert self._server is not None
            return list(self._server.iserver.subscription_service.subscriptions)

        return self._call(ids())

    def drop_subscriptions(self) -> None:
        """Delete every subscription server-side without telling the clients, as a PLC that
        lost them (a restart of its OPC-UA task, a resource limit) does; sessions stay up."""

        async def drop() -> None:
            assert self._server is not None
            service = self._server.iserver.subscription_service
            await service.delete_subscriptions(list(service.subscriptions))

        self._call(drop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
