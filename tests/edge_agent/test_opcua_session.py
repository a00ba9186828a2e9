"""The OPC-UA session: one per server, shared, closed on stop, against a real asyncua server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.edge_agent.test_opcua import (
    counters,
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


def test_a_subscription_the_server_dropped_is_recreated_and_a_quiet_plant_is_left_alone(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str, opcua_server: OpcUaTestServer
) -> None:
    watchdog_s = 4.0
    config = opcua_agent_config(
        tmp_path,
        port=broker.port,
        prefix=topic_prefix,
        server=opcua_server,
        extra_source=f"watchdog_s = {watchdog_s}",
    )
    state_dir = tmp_path / "state"
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
        [first] = opcua_server.subscriptions()

        # A quiet plant: no value changes for several watchdog periods. The server's keep-alives
        # show the subscription is alive, so the watchdog leaves it alone.
        quiet_since = time.monotonic()
        wait_until(lambda: time.monotonic() - quiet_since > 3 * watchdog_s, "a quiet spell")
        assert "opcua.watchdog.plc" not in counters(state_dir)
        assert opcua_server.subscriptions() == [first]

        # The PLC drops the subscription and tells nobody; the session stays up.
        opcua_server.drop_subscriptions()
        wait_until(lambda: counters(state_dir).get("opcua.watchdog.plc", 0) >= 1, "the watchdog")
        wait_until(lambda: len(opcua_server.subscriptions()) == 1, "a new subscription")
        assert opcua_server.subscriptions() != [first]
        before = samples_received(state_dir)
        opcua_server.write("temperature", 80.0)
        wait_until(lambda: samples_received(state_dir) > before, "values flowing again")
        # Re-created on the same session: not a reconnect.
        assert opcua_server.sessions() == 1
        assert "opcua.reconnects.plc" not in counters(state_dir)

        # Again: counted, but a server that keeps doing it does not fill the log.
        [second] = opcua_server.subscriptions()
        opcua_server.drop_subscriptions()
        wait_until(lambda: counters(state_dir).get("opcua.watchdog.plc", 0) >= 2, "the watchdog")
        wait_until(lambda: opcua_server.subscriptions() not in ([], [second]), "a new one")
        before = samples_received(state_dir)
        opcua_server.write("temperature", 81.0)
        wait_until(lambda: samples_received(state_dir) > before, "values flowing again")
        assert agent.stop() == 0
    log = agent.output()
    assert len([line for line in log.splitlines() if "re-creating the subscription" in line]) == 1
    assert "lost (" not in log
    assert "Traceback" not in log
