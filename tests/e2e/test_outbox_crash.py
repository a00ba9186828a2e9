"""The agent killed with SIGKILL mid-stream and restarted: every acknowledged result arrives.

Readings come in over MQTT QoS 1 into a persistent session, and each is acknowledged to the
broker only once its result is in the outbox. So a kill before the result is durable makes the
broker send the reading again, and a kill after leaves the result on disk for the next run.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_agent.contracts.dedup import Deduplicator
from edge_agent.contracts.payloads import ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.collector import Collector
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto, persistent_broker
from tests.support.mqtt import Probe, Received
from tests.support.processes import AgentProcess

READINGS = 3_000
KILLS = 5
BURST = 50  # readings handed to the broker at once: a kill finds some read but not yet stored
RATE = 60.0  # readings per second on average: the stream lasts about 50 s, through every kill
ASSETS = 4
BASE_TS = 1_700_000_000.0  # reading i carries ts BASE_TS + i: the result's window_end names it
PREFIX = "crash"
SERVING = "Agent press-01 serving"


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = persistent_broker(tmp_path / "broker")
    yield server
    server.stop()


class Publisher(threading.Thread):
    """Publishes the readings QoS 1 in bursts of ``BURST``, ``RATE`` per second on average.

    ``bursts`` counts the bursts handed to the client (waiters are told through ``changed``),
    ``sent`` the readings the broker acknowledged.
    """

    def __init__(self, port: int) -> None:
        super().__init__(name="publisher", daemon=True)
        self.probe = Probe(port)
        self.changed = threading.Condition()
        self.bursts = 0
        self.sent = 0
        self.failure: str | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for first in range(0, READINGS, BURST):
                delay = started + first / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                infos = [self._publish(i) for i in range(first, min(first + BURST, READINGS))]
                with self.changed:
                    self.bursts += 1
                    self.changed.notify_all()
                for offset, info in enumerate(infos):
                    info.wait_for_publish(30)
                    if not info.is_published():
                        self.failure = f"reading {first + offset} not acknowledged by the broker"
                        return
                self.sent = first + len(infos)
        finally:
            with self.changed:
                self.changed.notify_all()
            self.probe.close()

    def _publish(self, i: int) -> paho.MQTTMessageInfo:
        reading = {"temperature": float(i), "vibration": 0.5, "pressure": 2.0, "ts": BASE_TS + i}
        topic = f"{PREFIX}-in/line-2/press-{i % ASSETS}/reading"
        return self.probe.client.publish(topic, json.dumps(reading), qos=1)

    def wait_bursts(self, count: int, timeout: float = 60) -> None:
        with self.changed:
            if not self.changed.wait_for(
                lambda: self.bursts >= count or not self.is_alive(), timeout
            ):
                raise AssertionError(f"burst {count} not sent in {timeout} s")
        assert self.bursts >= count, self.failure


class Progress:
    """Which readings have a result so far, read incrementally from the collector's messages."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._read = 0

    def update(self, messages: list[Received]) -> bool:
        for message in messages[self._read :]:
            self.seen.add(round(json.loads(message.payload)["window_end"] - BASE_TS))
        self._read = len(messages)
        return len(self.seen) >= READINGS


def results_waiting(outbox: Path) -> int:
    with sqlite3.connect(outbox) as db:
        count: int = db.execute(
            "SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/results/%'"
        ).fetchone()[0]
    return count


def wait_serving(agent: AgentProcess, runs: int, timeout: float = 60) -> None:
    """Wait until the agent's log says it is serving for the ``runs``-th time."""
    deadline = time.monotonic() + timeout
    while agent.output().count(SERVING) < runs:
        if not agent.alive():
            raise AssertionError(f"the agent exited on its own:\n{agent.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {runs} not serving in {timeout} s:\n{agent.output()[-4000:]}"
            )
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_five_times_mid_stream_loses_no_acknowledged_result(
    tmp_path: Path, durable_broker: Mosquitto
) -> None:
    topics = DeviceTopics(PREFIX, "plant-a", "press-01")
    state_dir = tmp_path / "state"
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=durable_broker.port,
        prefix=PREFIX,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=state_dir,
        input_topic=f"{PREFIX}-in/line-2/+/reading",
        # The source's QoS 1 subscription (write_agent_config's default) is what makes it
        # durable: a persistent session under this fixed id, and manual acknowledgement.
        client_id="crash-press-01",
    )
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    bursts = -(-READINGS // BURST)
    # Kill k comes a few milliseconds after a burst in the k-th sixth of the stream, so that kills
    # land in different phases: readings received but not stored, stored but not acknowledged to
    # the broker, results in flight to the broker, the outbox replaying after the previous kill.
    kills = [
        (k * bursts // (KILLS + 1) + rng.randrange(3), rng.uniform(0.0, 0.04))
        for k in range(1, KILLS + 1)
    ]

    collector = Collector(durable_broker.port, f"{topics.base}/results/#")
    status = Probe(durable_broker.port)
    status.subscribe(topics.status)
    agent = AgentProcess(config, tmp_path / "agent.log")
    publisher = Publisher(durable_broker.port)
    progress = Progress()
    try:
        agent.start()
        wait_serving(agent, 1)
        # Online means the source is subscribed: its session exists and queues from now on.
        status.wait_for(
            lambda msgs: any(decode(StatusPayload, m.payload).state == "online" for m in msgs)
        )
        publisher.start()
        for run, (burst, delay) in enumerate(kills, start=2):
            publisher.wait_bursts(burst)
            time.sleep(delay)
            assert agent.alive(), f"the agent exited on its own:\n{agent.output()[-4000:]}"
            agent.kill()
            agent.start()
            wait_serving(agent, run)
        publisher.join(120)
        assert publisher.sent == READINGS, publisher.failure
        try:
            messages = collector.wait_for(progress.update, timeout=180)
        except AssertionError:
            missing = sorted(set(range(READINGS)) - progress.seen)
            raise AssertionError(
                f"{len(missing)} readings without a result (kills {kills}, seed {seed}): "
                f"{missing[:40]}\n{agent.output()[-4000:]}"
            ) from None

        # Drained: nothing of the results is left in the outbox once the broker confirmed them.
        outbox = state_dir / "outbox.db"
        deadline = time.monotonic() + 30
        while results_waiting(outbox) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert results_waiting(outbox) == 0
        assert agent.stop() == 0
        assert results_waiting(outbox) == 0
    finally:
        if agent.alive():
            agent.kill()
        status.close()
        collector.close()

    payloads = [(m.topic, decode(ResultPayload, m.payload)) for m in messages]
    # A number is never handed out twice, across every restart: one record per seq.
    records_by_seq: dict[int, set[str]] = defaultdict(set)
    for _topic, payload in payloads:
        records_by_seq[payload.seq].add(payload.record_id)
    reused = {seq: ids for seq, ids in records_by_seq.items() if len(ids) > 1}
    assert not reused, f"seq numbers reused after a restart: {sorted(reused)[:20]}"

    # Duplicates are dropped by (device, seq) only, as any consumer does it.
    dedup = Deduplicator()
    unique = [(topic, p) for topic, p in payloads if dedup.is_new_payload(p)]
    got = {round(p.window_end - BASE_TS) for _topic, p in unique}
    assert got == set(range(READINGS)), sorted(set(range(READINGS)) - got)[:40]
    for _topic, p in unique:
        i = round(p.window_end - BASE_TS)
        assert p.asset == f"press-{i % ASSETS}"
        assert p.outputs["score"] == pytest.approx(i + 5.0 + 200.0 + 0.5)
    for asset in range(ASSETS):
        topic = topics.results(f"press-{asset}")
        seqs = [p.seq for t, p in unique if t == topic]
        assert seqs == sorted(seqs), f"results on {topic} out of seq order"
    assert all(topic == topics.results(p.asset) for topic, p in unique)

    log = agent.output()
    assert log.count(SERVING) == KILLS + 1
    assert "Traceback" not in log
