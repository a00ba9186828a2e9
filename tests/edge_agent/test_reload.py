"""SIGHUP reloads a valid config in place and keeps serving the old one when the new is invalid."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from edge_agent.contracts.payloads import ResultPayload, decode
from edge_agent.contracts.topics import fleet_filter
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.notify_socket import NotifySocket
from tests.support.processes import AgentProcess

GOOD = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}


def _counters(state_dir: Path, expected: dict[str, float], timeout: float = 15) -> dict[str, float]:
    """The running agent's counters once they include ``expected`` (fails on timeout).

    Read from the status file the agent keeps (what ``edge-agent status`` prints): the config
    file on disk may be the invalid one under test.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            counters: dict[str, float] = json.loads((state_dir / "status.json").read_text())[
                "counters"
            ]
        except (OSError, ValueError):
            counters = {}
        if all(counters.get(k) == v for k, v in expected.items()):
            return counters
        if time.monotonic() > deadline:
            raise AssertionError(f"counters {counters} never reached {expected}")
        time.sleep(0.2)


def test_sighup_refuses_an_invalid_config_then_applies_a_valid_one(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    probe.subscribe(fleet_filter(topic_prefix, "results"))
    bundle = linear_bundle(tmp_path / "linear.bundle")

    def write(input_topic: str, extra: str = "") -> Path:
        return write_agent_config(
            tmp_path / "agent.toml",
            port=broker.port,
            prefix=topic_prefix,
            bundle=bundle,
            state_dir=tmp_path / "state",
            input_topic=input_topic,
            extra=extra,
        )

    def results_for(asset: str) -> list[ResultPayload]:
        payloads = [decode(ResultPayload, m.payload) for m in probe.messages]
        return [p for p in payloads if p.asset == asset]

    config = write(f"{topic_prefix}-old/line-2/+/reading")
    notify = NotifySocket()
    try:
        with AgentProcess(config, tmp_path / "agent.log", env=notify.env()) as agent:
            assert agent.process is not None
            notify.wait_for(lambda m: m.get("READY") == "1")

            # An invalid file: refused with file, line and key; the old config keeps serving.
            write(f"{topic_prefix}-new/line-2/+/reading", extra="[heartbeat2]\nspeed = 1\n")
            agent.process.send_signal(signal.SIGHUP)
            agent.wait_for_log("Config reload refused")
            agent.wait_for_log(f"{config}:")
            assert "heartbeat2: unknown key" in agent.output()
            refused = notify.wait_for(lambda m: "Reload refused" in m.get("STATUS", ""))
            assert "heartbeat2" in refused["STATUS"]
            _counters(tmp_path / "state", {"config.reload_refused": 1, "config.reloads": 0})
            probe.publish(f"{topic_prefix}-old/line-2/before/reading", json.dumps(GOOD))
            probe.wait_for(lambda _: len(results_for("before")) == 1)

            # A valid file: the pipeline restarts on it in the same process.
            write(f"{topic_prefix}-new/line-2/+/reading")
            agent.process.send_signal(signal.SIGHUP)
            agent.wait_for_log("Config reloaded")
            reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1")
            notify.wait_for(
                lambda m: m.get("READY") == "1", after=notify.messages.index(reloading) + 1
            )
            counters = _counters(
                tmp_path / "state", {"config.reloads": 1, "config.reload_refused": 1}
            )
            assert counters["config.reloads"] == 1
            probe.publish(f"{topic_prefix}-new/line-2/after/reading", json.dumps(GOOD))
            probe.wait_for(lambda _: len(results_for("after")) == 1)
            assert results_for("after")[0].outputs["score"] == 321.5
            assert agent.alive()
            assert agent.stop() == 0
    finally:
        notify.close()
