"""Windows that are ready together run through the model as one batch, each answered correctly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np

from edge_agent.contracts.payloads import ResultPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess

WEIGHTS = np.array([1.0, 10.0, 100.0])
BIAS = 0.5
READINGS = 400


def test_a_burst_of_readings_is_run_in_batches_and_every_row_keeps_its_answer(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    state_dir = tmp_path / "state"
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle", weights=WEIGHTS, bias=BIAS),
        state_dir=state_dir,
        input_topic=f"{topic_prefix}-in/line-2/+/reading",
    )
    rows = np.random.default_rng(4).normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0], size=(READINGS, 3))
    probe.subscribe(topics.results("press-1"))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        assert agent.process is not None
        # Frozen, the agent lets readings pile up at its socket; thawed, it finds them all ready.
        agent.process.send_signal(signal.SIGSTOP)
        try:
            for i, row in enumerate(rows):
                reading = dict(zip(FEATURES, row.tolist(), strict=True)) | {"ts": 1e9 + i}
                probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(reading))
        finally:
            agent.process.send_signal(signal.SIGCONT)
        probe.wait_for(lambda _m: len(probe.on_topic(topics.results("press-1"))) >= READINGS)
        assert agent.stop() == 0
    results = {
        r.window_end: r.outputs["score"]
        for r in (
            decode(ResultPayload, m.payload) for m in probe.on_topic(topics.results("press-1"))
        )
    }
    assert len(results) == READINGS
    expected = rows @ WEIGHTS + BIAS
    for i in range(READINGS):
        assert abs(float(results[1e9 + i]) - expected[i]) < 1e-3 * abs(expected[i]), i
    counters = json.loads((state_dir / "status.json").read_text())["counters"]
    assert counters["inference.windows"] == READINGS
    # Far fewer model calls than windows: ready windows went through together.
    assert counters["inference.batches"] < READINGS / 4, counters["inference.batches"]
