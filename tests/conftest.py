"""Shared fixtures: real brokers, a real OPC-UA server, tiny models, unique topic prefixes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, start_mosquitto
from tests.support.mqtt import Probe
from tests.support.opcua import OpcUaTestServer, Tag


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the whole session; tests keep apart through ``topic_prefix``."""
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, to stop, restart on the same port, or pause with SIGSTOP."""
    server = start_mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so one broker serves them all."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def probe(broker: Mosquitto) -> Iterator[Probe]:
    client = Probe(broker.port)
    yield client
    client.close()


OPCUA_TAGS = [Tag("temperature", 70.0), Tag("vibration", 0.3), Tag("pressure", 5.0)]


@pytest.fixture
def opcua_server() -> Iterator[OpcUaTestServer]:
    """A running asyncua server with OPCUA_TAGS under the object ``Machine``."""
    server = OpcUaTestServer(OPCUA_TAGS)
    server.start()
    yield server
    server.close()
