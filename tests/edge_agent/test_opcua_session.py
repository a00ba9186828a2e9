"""The OPC-UA session: one per server, shared, closed on stop, against a real asyncua server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.edge_agent.test_opcua import (
    opcua_agent_config,
    samples_received,
    wait_until,
)
from tests.support.mosquitto import Mosquitto
from tests.support.opcua import OpcUaTestServer
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.slow


def test_two_sources_and_a_writeback_on_one_server_share_one_session(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str, opcua_server: OpcUaTestServer
) -> None:
    url = opcua_server.endpoint
    second_source_and_sink = f"""
[[sources]]
type = "opcua"
name = "plc-line"
url = "{url}"
asset = "press-2"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
tags = [{{ name = "temperature", node_id = "{opcua_server.node_id("temperature")}" }}]

[[sinks]]
type = "opcua"
name = "plc-writeback"
url = "{url}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
writes = [{{ output = "score", node_id = "{opcua_server.node_id("pressure")}", asset = "none" }}]
"""
    config = opcua_agent_config(
        tmp_path,
        port=broker.port,
        prefix=topic_prefix,
        server=opcua_server,
        extra=second_source_and_sink,
    )
    state_dir = tmp_path / "state"
    assert opcua_server.sessions() == 0
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        wait_until(lambda: len(opcua_server.subscriptions()) == 2, "one subscription per source")
        # Three users of one server, one session: a PLC's few session slots are not used up.
        assert opcua_server.sessions() == 1
        before = samples_received(state_dir)
        opcua_server.write("vibration", 0.5)
        wait_until(lambda: samples_received(state_dir) > before, "a value through the session")
        assert opcua_server.sessions() == 1
        assert agent.stop() == 0
    # A clean stop closes the session and its subscriptions, rather than leaving the PLC to time
    # them out while it refuses new sessions.
    assert opcua_server.sessions() == 0
    assert opcua_server.subscriptions() == []
    assert "Traceback" not in agent.output()
