"""A running agent with a signed model 1, its fleet side, and a sender of sensor readings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contracts.bundle import generate_keypair
from edge_agent.contracts.payloads import ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.lifecycle import CENTER, Fleet, complete_bundle, lifecycle_config
from tests.support.models import FEATURES
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess


@dataclass
class Keys:
    private: Path
    public: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private, public = generate_keypair()
    (tmp_path / "fleet.key").write_bytes(private)
    (tmp_path / "fleet.pub").write_bytes(public)
    return Keys(tmp_path / "fleet.key", tmp_path / "fleet.pub")


@dataclass
class Device:
    """The agent under test, seen from the plant (readings, results) and the fleet (acks)."""

    agent: AgentProcess
    fleet: Fleet
    probe: Probe
    prefix: str
    topics: DeviceTopics
    state_dir: Path
    sent: int = 0

    def send(self, row: np.ndarray | None = None, *, asset: str = "press-1") -> float:
        """Publish one reading; returns its timestamp (the result's ``window_end``)."""
        values = CENTER if row is None else row
        ts = 1_700_000_000.0 + self.sent
        self.sent += 1
        reading = dict(zip(FEATURES, [float(v) for v in values], strict=True)) | {"ts": ts}
        self.probe.publish(f"{self.prefix}-in/line-2/{asset}/reading", json.dumps(reading))
        return ts

    def results(self) -> list[ResultPayload]:
        return [
            decode(ResultPayload, m.payload)
            for m in self.probe.messages
            if m.topic.startswith(f"{self.topics.base}/results/")
        ]

    def result_for(self, ts: float, timeout: float = 30) -> ResultPayload:
        self.probe.wait_for(lambda _m: any(r.window_end == ts for r in self.results()), timeout)
        return next(r for r in self.results() if r.window_end == ts)


def start_device(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    prefix: str,
    keys: Keys,
    *,
    extra: str = "",
) -> Iterator[Device]:
    topics = DeviceTopics(prefix, "plant-a", "press-01")
    probe.subscribe(f"{prefix}/#")
    v1 = complete_bundle(tmp_path / "linear-1.bundle", version="1", key=keys.private)
    state_dir = tmp_path / "state"
    config = lifecycle_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=prefix,
        bundle=v1,
        state_dir=state_dir,
        public_key=keys.public,
        extra=extra,
    )
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        probe.wait_for(
            lambda msgs: any(
                m.topic == topics.status and decode(StatusPayload, m.payload).state == "online"
                for m in msgs
            )
        )
        yield Device(agent, Fleet(probe, topics), probe, prefix, topics, state_dir)
        # Whatever the test did, the agent never crashed.
        assert agent.alive(), agent.output()
        assert "Traceback" not in agent.output(), agent.output()


@pytest.fixture
def device(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str, keys: Keys
) -> Iterator[Device]:
    yield from start_device(tmp_path, broker, probe, topic_prefix, keys)
