"""Sources end to end: the simulated pump, CSV replay, and the MQTT source across a broker restart."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from edge_agent.contracts.payloads import ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.errors import ConfigError
from edge_agent.sources.simulated import pump_values, read_csv_rows
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run


def test_the_simulated_bearing_wears_and_then_is_new_again() -> None:
    rng = random.Random(1)
    vibration = [pump_values(t, 100.0, rng)["vibration"] for t in (5, 50, 95, 105)]
    assert vibration[0] < vibration[1] < vibration[2]
    assert vibration[3] < vibration[1]


def test_csv_rows_and_the_line_of_a_bad_cell(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("ts,temperature,vibration\n1,70.5,0.3\n2,71,0.4\n")
    assert read_csv_rows(str(good)) == [
        {"temperature": 70.5, "vibration": 0.3},
        {"temperature": 71.0, "vibration": 0.4},
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("temperature\n70\nwarm\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: column temperature holds 'warm'"):
        read_csv_rows(str(bad))


def _online(topics: DeviceTopics):  # type: ignore[no-untyped-def]
    return lambda msgs: any(
        m.topic == topics.status and decode(StatusPayload, m.payload).state == "online"
        for m in msgs
    )


@pytest.mark.slow
def test_a_simulated_pump_and_a_csv_replay_feed_the_model(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    probe.subscribe(f"{topic_prefix}/#")
    replay = tmp_path / "replay.csv"
    replay.write_text("temperature,vibration,pressure\n1,2,3\n4,5,6\n")
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/unused",
        extra=f"""
[[sources]]
type = "simulated"
name = "pump"
asset = "pump-1"
interval_s = 0.05

[[sources]]
type = "simulated"
name = "replay"
asset = "replayed"
signal = "csv"
csv = "{replay}"
loop = false
interval_s = 0.05
""",
    )
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        probe.wait_for(lambda msgs: len(probe.on_topic(topics.results("pump-1"))) >= 5)
        replayed = probe.wait_for(lambda msgs: len(probe.on_topic(topics.results("replayed"))) >= 2)
        scores = [
            decode(ResultPayload, m.payload).outputs["score"]
            for m in replayed
            if m.topic == topics.results("replayed")
        ]
        assert scores == [1 + 20 + 300 + 0.5, 4 + 50 + 600 + 0.5]
        assert agent.stop() == 0
    assert "Traceback" not in agent.output()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_mqtt_source_resubscribes_after_a_broker_restart(
    tmp_path: Path, private_broker: Mosquitto, topic_prefix: str, protocol: str
) -> None:
    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=private_broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic="sensors/+/reading",
        asset_level=1,
        broker=f'protocol = "{protocol}"',
    )
    reading = json.dumps({"temperature": 1.0, "vibration": 2.0, "pressure": 3.0})
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log(f"(MQTT {protocol})")
        probe = Probe(private_broker.port, protocol=protocol)
        try:
            probe.subscribe(f"{topic_prefix}/#")
            probe.wait_for(_online(topics))
            probe.publish("sensors/before/reading", reading)
            probe.wait_for(lambda msgs: bool(probe.on_topic(topics.results("before"))))
        finally:
            probe.close()

        private_broker.restart()
        agent.wait_for_log("source sensors: reconnected")
        probe = Probe(private_broker.port, protocol=protocol)
        try:
            probe.subscribe(f"{topic_prefix}/#")
            probe.wait_for(_online(topics))  # the uplink is back too
            # The source may still be waiting for its SUBACK: publish until a result comes back.
            for _ in range(40):
                probe.publish("sensors/after/reading", reading)
                try:
                    probe.wait_for(
                        lambda msgs: bool(probe.on_topic(topics.results("after"))), timeout=0.5
                    )
                    break
                except AssertionError:
                    continue
            assert probe.on_topic(topics.results("after"))
        finally:
            probe.close()
        assert agent.stop() == 0


def test_once_reads_one_window_infers_and_publishes_nothing(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    probe.subscribe(f"{topic_prefix}/#")
    replay = tmp_path / "replay.csv"
    replay.write_text("temperature,vibration,pressure\n1,2,3\n")
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/+/reading",
        extra=f"""
[[sources]]
type = "simulated"
name = "replay"
asset = "replayed"
signal = "csv"
csv = "{replay}"
interval_s = 0.05
""",
    )
    result = run("edge-agent", "once", "--json", "--config", str(config), check=True)
    report = json.loads(result.stdout)
    assert report["asset"] == "replayed"
    assert report["features"] == {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}
    assert report["outputs"] == {"score": 1 + 20 + 300 + 0.5}
    human = run("edge-agent", "once", "--config", str(config), check=True).stdout
    assert "score" in human and "replayed" in human
    assert not [m for m in probe.messages if m.topic.startswith(topic_prefix)]


def test_once_gives_up_after_its_timeout_with_a_reason(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/+/reading",
    )
    result = run("edge-agent", "once", "--timeout", "1", "--config", str(config))
    assert result.returncode == 1
    assert "no complete window within 1 s" in result.stderr
