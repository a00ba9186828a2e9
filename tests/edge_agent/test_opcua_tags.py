"""OPC-UA tags the server does not have, and per-tag deadbands, against a real asyncua server."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.contracts.payloads import HeartbeatPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.edge_agent.test_opcua import (
    counters,
    opcua_agent_config,
    samples_received,
    source_state,
    wait_until,
)
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.opcua import OpcUaTestServer
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.slow


def test_tags_missing_on_the_server_are_left_out_and_the_others_served(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    opcua_server: OpcUaTestServer,
) -> None:
    heartbeat = DeviceTopics(topic_prefix, "plant-a", "press-01").heartbeat
    probe.subscribe(heartbeat)
    ns = opcua_server.namespace_index
    tag_lines = [
        f'  {{ name = "temperature", node_id = "{opcua_server.node_id("temperature")}" }},',
        f'  {{ name = "vibration", browse_path = "{ns}:Machine/{ns}:vibration" }},',
        # A misspelt browse path and a node id the PLC does not have: both are config mistakes.
        f'  {{ name = "pressure", browse_path = "{ns}:Machine/{ns}:presure" }},',
        f'  {{ name = "flow", node_id = "ns={ns};s=Machine.flow" }},',
    ]
    config = opcua_agent_config(
        tmp_path,
        port=broker.port,
        prefix=topic_prefix,
        server=opcua_server,
        tag_lines=tag_lines,
    )
    state_dir = tmp_path / "state"
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        # The two tags that exist deliver their initial values, then every change.
        wait_until(lambda: samples_received(state_dir) >= 2, "the initial values")
        assert source_state(state_dir) == "connected"
        before = samples_received(state_dir)
        opcua_server.write("temperature", 71.0)
        opcua_server.write("vibration", 0.9)
        wait_until(lambda: samples_received(state_dir) >= before + 2, "two changes")
        assert counters(state_dir)["opcua.unresolved.plc"] == 2
        # The same counter goes out in the heartbeat, for the fleet's dashboards.
        probe.wait_for(
            lambda _m: any(
                decode(HeartbeatPayload, m.payload).counters.get("opcua.unresolved.plc") == 2
                for m in probe.on_topic(heartbeat)
            ),
            timeout=60,
        )

        # A reconnect resolves the tags again; the person reading the log was told once.
        opcua_server.stop()
        wait_until(lambda: source_state(state_dir) == "reconnecting", "the outage to be seen")
        opcua_server.start()
        wait_until(lambda: source_state(state_dir) == "connected", "the reconnect")
        before = samples_received(state_dir)
        opcua_server.write("vibration", 1.1)
        wait_until(lambda: samples_received(state_dir) > before, "a change after the reconnect")
        assert counters(state_dir)["opcua.unresolved.plc"] == 2
        assert agent.stop() == 0
    log = agent.output()
    pressure = [line for line in log.splitlines() if "tag pressure left out" in line]
    assert len(pressure) == 1, log
    assert "OPC-UA source plc" in pressure[0]
    assert f"'{ns}:Machine/{ns}:presure'" in pressure[0]
    flow = [line for line in log.splitlines() if "tag flow left out" in line]
    assert len(flow) == 1, log
    assert f"ns={ns};s=Machine.flow" in flow[0]
    assert "temperature left out" not in log and "vibration left out" not in log
    assert "unreachable" not in log
    assert "Traceback" not in log
