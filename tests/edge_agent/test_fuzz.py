"""Fuzzed payloads on the input topics of a running agent: it never stops, and every message is
either refused with a counted reason or becomes a result."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.contracts.payloads import ResultPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run

pytestmark = pytest.mark.slow

PREFIX = "fuzz-agent"
INPUT = "fuzz-in/line-2"

numbers = st.integers() | st.floats() | st.just(10**400)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
records = st.fixed_dictionaries({}, optional=dict.fromkeys([*FEATURES, "ts"], json_values)).map(
    lambda record: json.dumps(record).encode()
)
payloads = (
    st.binary(max_size=200)
    | json_values.map(lambda value: json.dumps(value).encode())
    | records
    | st.sampled_from([b"1" + b"0" * 5000, b"[" * 5000, b'{"ts": 1e999}'])
)


class FuzzAgent:
    def __init__(self, config: Path, probe: Probe, agent: AgentProcess) -> None:
        self.config = config
        self.probe = probe
        self.agent = agent
        self.topics = DeviceTopics(PREFIX, "plant-a", "press-01")
        self.sentinel = 0

    def counters(self) -> dict[str, float]:
        status = json.loads(
            run("edge-agent", "status", "--json", "--config", str(self.config), check=True).stdout
        )
        return dict(status["counters"])


@pytest.fixture(scope="module")
def fuzz_agent(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzAgent]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = write_agent_config(
        tmp / "agent.toml",
        port=broker.port,
        prefix=PREFIX,
        bundle=linear_bundle(tmp / "linear.bundle"),
        state_dir=tmp / "state",
        input_topic=f"{INPUT}/+/reading",
    )
    probe = Probe(broker.port)
    probe.subscribe(f"{PREFIX}/#")
    with AgentProcess(config, tmp / "agent.log") as agent:
        agent.wait_for_log("serving")
        yield FuzzAgent(config, probe, agent)
        assert agent.stop() == 0
    probe.close()
    assert "Traceback" not in agent.output()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(payloads, min_size=1, max_size=25))
def test_fuzzed_payloads_are_refused_with_reasons_and_the_agent_keeps_serving(
    fuzz_agent: FuzzAgent, batch: list[bytes]
) -> None:
    probe = fuzz_agent.probe
    for payload in batch:
        probe.publish(f"{INPUT}/fuzz/reading", payload)
    # A good reading after the batch: its result shows the agent took everything before it.
    fuzz_agent.sentinel += 1
    marker = 1_000_000 + fuzz_agent.sentinel
    good = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0, "ts": marker}
    probe.publish(f"{INPUT}/sentinel/reading", json.dumps(good))
    topic = fuzz_agent.topics.results("sentinel")
    probe.wait_for(
        lambda msgs: any(
            m.topic == topic and decode(ResultPayload, m.payload).window_end == marker for m in msgs
        )
    )
    assert fuzz_agent.agent.alive()
    # Every message so far was refused with a reason or became a window.
    deadline = time.monotonic() + 15
    while True:
        counters = fuzz_agent.counters()
        refused = sum(v for k, v in counters.items() if k.startswith("rejects."))
        settled = refused + counters.get("inference.windows", 0)
        if settled == counters.get("source.sensors.messages") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert settled == counters["source.sensors.messages"], counters
