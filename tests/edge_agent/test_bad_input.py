"""Bad sensor payloads are counted by reason, logged once per kind with the topic, and the agent
goes on serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_agent.contracts.payloads import HeartbeatPayload, ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run

GOOD = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}

BAD_PAYLOADS: dict[str, list[bytes]] = {
    "not_json": [b"{not json", b"\xff\xfe\x00garbage", b""],
    "not_object": [b"[1, 2, 3]", b"42"],
    "missing_feature": [json.dumps({"temperature": 1.0, "vibration": 2.0}).encode()],
    "non_finite": [
        b'{"temperature": NaN, "vibration": 2, "pressure": 3}',
        b'{"temperature": 1, "vibration": Infinity, "pressure": 3}',
        b'{"temperature": 1e999, "vibration": 2, "pressure": 3}',
    ],
    "not_a_number": [
        json.dumps(GOOD | {"pressure": "high"}).encode(),
        json.dumps(GOOD | {"vibration": None}).encode(),
        json.dumps(GOOD | {"temperature": True}).encode(),
    ],
    "oversized": [json.dumps(GOOD | {"padding": "x" * 5000}).encode()],
}


def test_bad_input_is_counted_and_the_agent_keeps_serving(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    probe.subscribe(f"{topic_prefix}/#")
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/line-2/+/reading",
    )
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        probe.wait_for(
            lambda msgs: any(
                m.topic == topics.status and decode(StatusPayload, m.payload).state == "online"
                for m in msgs
            )
        )
        for reason, payloads in BAD_PAYLOADS.items():
            for payload in payloads:
                probe.publish(f"{topic_prefix}-in/line-2/{reason}/reading", payload)
        probe.publish(f"{topic_prefix}-in/line-2/good/reading", json.dumps(GOOD))

        messages = probe.wait_for(lambda msgs: any(m.topic == topics.results("good") for m in msgs))
        result = decode(
            ResultPayload, next(m for m in messages if m.topic == topics.results("good")).payload
        )
        assert result.outputs["score"] == 1.0 + 20.0 + 300.0 + 0.5
        assert not [
            m for m in messages if "/results/" in m.topic and m.topic != topics.results("good")
        ]

        expected = {f"rejects.{reason}": len(payloads) for reason, payloads in BAD_PAYLOADS.items()}
        deadline = time.monotonic() + 10
        while True:
            status = json.loads(
                run("edge-agent", "status", "--json", "--config", str(config), check=True).stdout
            )
            counted = {k: v for k, v in status["counters"].items() if k.startswith("rejects.")}
            if counted == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert counted == expected
        assert agent.alive()
        # What an operator reads: sources, queues, inference latency, outbox, model.
        assert status["model"] == "linear@1" and status["uplink"] == "connected"
        assert status["sources"] == {"sensors": "connected"}
        assert status["counters"]["inference.windows"] >= 1
        for gauge in ("queue.windows", "outbox.rows", "outbox.inflight", "inference.p99_ms"):
            assert gauge in status["gauges"], gauge
        assert 0 < status["gauges"]["inference.p50_ms"] <= status["gauges"]["inference.p99_ms"]
        # The heartbeat carries the same counters to the fleet.
        probe.wait_for(
            lambda msgs: any(
                m.topic == topics.heartbeat
                and decode(HeartbeatPayload, m.payload).counters.get("rejects.not_json")
                == len(BAD_PAYLOADS["not_json"])
                for m in msgs
            )
        )

        human = run("edge-agent", "status", "--config", str(config), check=True).stdout
        assert "rejects.not_json" in human and "press-01" in human
        assert agent.stop() == 0

    log = agent.output()
    for reason in BAD_PAYLOADS:
        lines = [line for line in log.splitlines() if f"({reason})" in line]
        assert len(lines) == 1, (reason, lines)
        assert f"topic {topic_prefix}-in/line-2/{reason}/reading" in lines[0]
    assert "Traceback" not in log
