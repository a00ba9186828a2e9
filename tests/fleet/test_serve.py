"""`fleet serve` workers: ingest into the registry, drop duplicates, refuse bad input, share load."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from edge_agent.contracts.payloads import FeatureSummary
from edge_agent.contracts.topics import DeviceTopics
from fleet.registry import Registry, open_registry
from fleet.swarm import Swarm
from tests.fleet.support import FleetServe, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe

pytestmark = pytest.mark.slow

SUMMARY = {"temperature": FeatureSummary(bins=[1, 2, 3, 4], count=10, mean=1.0, m2=2.0)}


def _stored(log: str) -> int:
    found = re.findall(r"'drift\.stored': (\d+)", log)
    return int(found[-1]) if found else 0


def test_two_workers_share_the_ingest_without_loss_or_duplicates(
    tmp_path: Path,
    broker: Mosquitto,
    topic_prefix: str,
    probe: Probe,
    registry_location: tuple[str, str | None],
) -> None:
    location, schema = registry_location
    if schema is not None:  # libpq's own way to pick the schema, as an operator would
        location += f"?options=-csearch_path%3D{schema}"

    def open_db() -> Registry:
        return open_registry(location)

    args = [
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--prefix",
        topic_prefix,
        "--registry",
        location,
    ]
    first = FleetServe(args, tmp_path / "w1.log", "--share-group", "fleet")
    second = FleetServe(args, tmp_path / "w2.log", "--share-group", "fleet")
    with (
        first,
        second,
        Swarm("127.0.0.1", broker.port, topic_prefix, count=5, model="linear", shards=2) as swarm,
    ):

        def devices() -> int:
            with open_db() as registry:
                return len(registry.devices())

        wait_until(lambda: devices() == 5, "both workers to record the five devices")
        # Bad input first: refused, counted, and the workers keep serving.
        bad = DeviceTopics(topic_prefix, "plant-a", "sim-000")
        probe.publish(bad.drift, b"not json")
        probe.publish(bad.ack, b'{"schema_version": 99}')
        now = time.time()
        for window in range(40):
            for device in swarm.devices:
                swarm.send_drift(device, SUMMARY, window_end=now + window, copies=2)

        def rows() -> int:
            with open_db() as registry:
                return len(registry.drift())

        try:
            wait_until(lambda: rows() == 200, "every summary stored")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{first.output()}\n{second.output()}") from None
    assert first.stop() == 0 and second.stop() == 0
    logs = [first.output(), second.output()]
    stored = [_stored(log) for log in logs]
    assert sum(stored) == 200 and min(stored) > 0, stored  # both took a share, none twice
    assert "Refused a message" in "".join(logs)
    assert "schema_version 99 is not supported" in "".join(logs)
    assert "Traceback" not in "".join(logs)
    with open_db() as registry:
        assert len(registry.drift()) == 200


def test_serve_tells_systemd_it_is_ready_and_stops_cleanly(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(60)
        args = ["--broker", f"127.0.0.1:{broker.port}", "--prefix", topic_prefix,
                "--registry", str(tmp_path / "fleet.db")]  # fmt: skip
        server = FleetServe(args, tmp_path / "serve.log", env={"NOTIFY_SOCKET": str(notify)})
        try:
            message = listener.recv(4096).decode()
            assert "READY=1" in message and topic_prefix in message
        finally:
            assert server.stop() == 0
        assert "STOPPING=1" in listener.recv(4096).decode()
