"""OPC-UA tags the server does not have, and per-tag deadbands, against a real asyncua server."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.contracts.payloads import HeartbeatPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.health import Health
from edge_agent.sources.opcua import OpcUaSource
from tests.edge_agent.test_opcua import (
    counters,
    opcua_agent_config,
    samples_received,
    source_state,
    wait_until,
)
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.opcua import OpcUaTestServer, Tag
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


def test_a_tag_added_to_the_plc_later_is_served_after_the_next_reconnect(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    # Its own server: the tag table changes between the two starts.
    server = OpcUaTestServer([Tag("temperature", 60.0), Tag("vibration", 0.2)])
    server.start()
    try:
        ns = server.namespace_index
        tag_lines = [
            f'  {{ name = "temperature", node_id = "{server.node_id("temperature")}" }},',
            f'  {{ name = "vibration", browse_path = "{ns}:Machine/{ns}:vibration" }},',
            f'  {{ name = "pressure", browse_path = "{ns}:Machine/{ns}:pressure" }},',
        ]
        config = opcua_agent_config(
            tmp_path, port=broker.port, prefix=topic_prefix, server=server, tag_lines=tag_lines
        )
        state_dir = tmp_path / "state"
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            agent.wait_for_log("serving")
            wait_until(lambda: counters(state_dir).get("opcua.unresolved.plc") == 1, "the gap")
            # The PLC's program is updated with the new tag: the server restarts with it.
            server.stop()
            wait_until(lambda: source_state(state_dir) == "reconnecting", "the outage to be seen")
            server.tags.append(Tag("pressure", 5.0))
            server.start()
            wait_until(lambda: source_state(state_dir) == "connected", "the reconnect")
            # Three initial values after the reconnect, pressure's among them, then its changes.
            wait_until(lambda: samples_received(state_dir) >= 2 + 3, "the initial values")
            before = samples_received(state_dir)
            server.write("pressure", 5.5)
            wait_until(lambda: samples_received(state_dir) >= before + 1, "a change of pressure")
            server.write("pressure", 6.0)
            wait_until(lambda: samples_received(state_dir) >= before + 2, "another change")
            assert agent.stop() == 0
        log = agent.output()
        assert len([line for line in log.splitlines() if "tag pressure left out" in line]) == 1
        assert "Traceback" not in log
    finally:
        server.close()


class Collector:
    """Runs a real OpcUaSource (the agent's own class, its own session) on this test's event loop
    and keeps every (tag, value) it delivers, in order."""

    def __init__(self, source: OpcUaSource) -> None:
        self.source = source
        self.values: list[tuple[str, float]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.source.start()
        assert await self.source.wait_ready(60), "the source never subscribed"
        self._task = asyncio.create_task(self._collect(), name="collector")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.source.stop()

    async def _collect(self) -> None:
        async for readings in self.source.readings():
            for reading in readings:
                self.values.extend((s.tag, s.value) for s in reading.samples)
            self._changed.set()

    async def wait_for(self, tag: str, value: float, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while (tag, value) not in self.values:
                self._changed.clear()
                await self._changed.wait()

    def of(self, tag: str) -> list[float]:
        return [value for name, value in self.values if name == tag]


def in_process_source(
    tmp_path: Path, server: OpcUaTestServer, tag_lines: list[str], **source: str
) -> OpcUaSource:
    """An OpcUaSource built from a config file, as the agent builds it."""
    path = opcua_agent_config(
        tmp_path, port=1883, prefix="unused", server=server, tag_lines=tag_lines
    )
    text = path.read_text()
    for key, value in source.items():
        text = text.replace('asset = "press-1"\n', f'asset = "press-1"\n{key} = {value}\n')
    path.write_text(text)
    config = load_config(path)
    return OpcUaSource(config.sources[0], config, Health(), {})  # type: ignore[arg-type]


def test_an_absolute_deadband_keeps_smaller_changes_from_the_agent(
    tmp_path: Path, opcua_server: OpcUaTestServer
) -> None:
    tag_lines = [
        # The source's deadband (0.5) for pressure, a wider one for temperature, none for
        # vibration: every change of vibration arrives, which tells what else was sent before.
        f'  {{ name = "temperature", node_id = "{opcua_server.node_id("temperature")}", deadband = 2.0 }},',
        f'  {{ name = "vibration", node_id = "{opcua_server.node_id("vibration")}", deadband = 0 }},',
        f'  {{ name = "pressure", node_id = "{opcua_server.node_id("pressure")}" }},',
    ]
    source = in_process_source(tmp_path, opcua_server, tag_lines, deadband="0.5")

    async def scenario() -> None:
        async with Collector(source) as seen:
            # The first value of each item is always sent.
            await seen.wait_for("temperature", 70.0)
            await seen.wait_for("pressure", 5.0)
            await seen.wait_for("vibration", 0.3)

            await asyncio.to_thread(opcua_server.write, "temperature", 71.5)  # 1.5 < 2.0
            await asyncio.to_thread(opcua_server.write, "pressure", 5.3)  # 0.3 < 0.5
            # Written after them: once it is here, anything the server sent for them is too.
            await asyncio.to_thread(opcua_server.write, "vibration", 0.31)
            await seen.wait_for("vibration", 0.31)
            assert seen.of("temperature") == [70.0]
            assert seen.of("pressure") == [5.0]

            # Beyond the deadband from both the last value and the last one reported.
            await asyncio.to_thread(opcua_server.write, "temperature", 74.0)
            await asyncio.to_thread(opcua_server.write, "pressure", 6.0)
            await asyncio.to_thread(opcua_server.write, "vibration", 0.32)
            await seen.wait_for("vibration", 0.32)
            assert seen.of("temperature") == [70.0, 74.0]
            assert seen.of("pressure") == [5.0, 6.0]
            assert seen.of("vibration") == [0.3, 0.31, 0.32]

    asyncio.run(scenario())
