"""The fixtures themselves: the broker can be stopped, restarted and paused; the PLC answers."""

from __future__ import annotations

import socket
import time

from asyncua.sync import Client

from tests.support.mosquitto import Mosquitto, port_open
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
