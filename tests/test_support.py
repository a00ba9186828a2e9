"""The fixtures themselves: the broker can be stopped, restarted and paused; the PLC answers."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from asyncua.sync import Client

from tests.support.mosquitto import Mosquitto, port_open, require_mosquitto
from tests.support.mqtt import Probe
from tests.support.opcua import OpcUaTestServer


def test_private_broker_stops_restarts_on_same_port_and_pauses(private_broker: Mosquitto) -> None:
    port = private_broker.port
    probe = Probe(port)
    probe.subscribe("fixture/#")
    probe.publish("fixture/a", b"1")
    probe.wait_for(lambda msgs: len(msgs) == 1)
    probe.close()

    private_broker.stop()
    assert not port_open(port)
    private_broker.start()
    assert private_broker.port == port and port_open(port)

    private_broker.pause()
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.settimeout(0.5)
        # CONNECT packet: a paused broker accepts the TCP connection but never answers.
        sock.sendall(bytes.fromhex("101000044d5154540402003c000474657374"))
        started = time.monotonic()
        try:
            answer = sock.recv(4)
        except TimeoutError:
            answer = b""
        assert answer == b"" and time.monotonic() - started >= 0.4
    private_broker.resume()
    probe = Probe(port)
    probe.subscribe("fixture/#")
    probe.publish("fixture/b", b"2")
    probe.wait_for(lambda msgs: any(m.topic == "fixture/b" for m in msgs))
    probe.close()


def test_opcua_server_serves_declared_tags(opcua_server: OpcUaTestServer) -> None:
    opcua_server.write("temperature", 81.5)
    with Client(opcua_server.endpoint) as client:
        node = client.get_node(opcua_server.node_id("temperature"))
        assert node.read_value() == 81.5
        assert client.get_node(opcua_server.node_id("pressure")).read_value() == 5.0


def _uid(pid: int) -> int:
    """The real uid of a running process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_broker_runs_as_the_invoking_user_and_writes_in_its_folder(tmp_path: Path) -> None:
    # As root, mosquitto would switch to the user `mosquitto` and fail to write here.
    broker = Mosquitto(
        tmp_path,
        binary=require_mosquitto(),
        extra_config=f"persistence true\npersistence_location {tmp_path}/\n",
    )
    broker.start()
    try:
        assert broker.process is not None
        assert _uid(broker.process.pid) == os.geteuid()
    finally:
        broker.stop()
    assert (tmp_path / "mosquitto.db").exists()  # written at exit, as the invoking user
    assert "Error" not in broker.log.read_text()


def test_a_user_named_in_the_config_is_left_to_mosquitto(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, binary="mosquitto", extra_config="user nobody\n")
    lines = broker.config.read_text().splitlines()
    assert [line for line in lines if line.startswith("user ")] == ["user nobody"]
