"""The fleet manager against a swarm of simulated devices on a real broker.

A swarm (``fleet.swarm``) of 1,000 devices speaking the real control protocol over a few shared
connections, a real mosquitto, and ``fleet serve`` as its own process with a SQLite registry.
Figures: how long a staged rollout (canary 10, waves 50 and 100 %) takes to reach every device,
against the time the same worker takes to register the same devices from their retained status;
and drift summaries ingested per second (decoded, de-duplicated, stored), against a bare paho
subscriber receiving the same messages in the same run.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.common import Figure
from edge_agent.contracts.payloads import FeatureSummary
from fleet.broker import MosquittoProcess
from fleet.registry import ModelRecord, SqliteRegistry
from fleet.rollouts import Gates, plan_rollout
from fleet.swarm import Swarm
from tests.support.models import linear_bundle

BENCH = "fleet"
PREFIX = "bench"
SUMMARY = {
    name: FeatureSummary(bins=[3, 5, 8, 5, 3], count=24, mean=0.1, m2=20.0, min=-2.0, max=2.0)
    for name in ("temperature", "vibration", "pressure")
}


def _wait(check: Callable[[], bool], what: str, timeout: float = 300.0) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.perf_counter() - started


def _bare_rate(port: int, swarm: Swarm, per_device: int) -> float:
    """Messages per second a bare paho subscriber receives from the swarm's drift summaries."""
    expected = len(swarm.devices) * per_device
    received = 0
    done = threading.Event()

    def on_message(*_args: object) -> None:
        nonlocal received
        received += 1
        if received >= expected:
            done.set()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(f"{PREFIX}/+/+/drift", 1)
    time.sleep(1.0)  # let the SUBACK arrive; the figure is timed from the first publish
    started = time.perf_counter()
    _send(swarm, per_device)
    done.wait(300)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return received / elapsed


def _send(swarm: Swarm, per_device: int) -> None:
    now = time.time()
    for window in range(per_device):
        for device in swarm.devices:
            swarm.send_drift(device, SUMMARY, window_end=now + window)


def run(quick: bool) -> list[Figure]:
    devices = 200 if quick else 1000
    per_device = 10 if quick else 20
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "broker")
        broker.start()
        swarm = Swarm(
            "127.0.0.1", broker.port, PREFIX, count=devices, model="linear", shards=10
        ).start()
        serve: subprocess.Popen[bytes] | None = None
        try:
            bare = _bare_rate(broker.port, swarm, per_device)
            db = work / "fleet.db"
            log = (work / "serve.log").open("wb")
            serve = subprocess.Popen(
                [sys.executable, "-m", "fleet", "--broker", f"127.0.0.1:{broker.port}",
                 "--prefix", PREFIX, "--registry", str(db), "serve", "--tick", "0.2",
                 "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _wait(db.exists, "the registry")
            registry = SqliteRegistry(db)
            register_s = _wait(
                lambda: len(registry.devices()) >= devices, "every device registered"
            )

            summaries = devices * per_device
            started = time.perf_counter()
            _send(swarm, per_device)
            _wait(lambda: len(registry.drift()) >= summaries, "every summary stored")
            ingest = summaries / (time.perf_counter() - started)

            bundle = linear_bundle(work / "linear-2.bundle", version="2")
            data = bundle.read_bytes()
            registry.add_model(
                ModelRecord("linear", "2", hashlib.sha256(data).hexdigest(), len(data),
                            str(bundle), {}, published=time.time())
            )  # fmt: skip
            rollout = plan_rollout(
                registry, "linear", "2", "all", canary=10, waves=(50, 100),
                gates=Gates(drift_margin=-1), timeout_s=120,
            )  # fmt: skip

            def finished() -> bool:
                found = registry.rollout(rollout.id)
                return found is not None and found.state in {"completed", "halted"}

            rollout_s = _wait(finished, "the rollout")
            final = registry.rollout(rollout.id)
            assert final is not None and final.state == "completed", final
            assert set(swarm.versions().values()) == {"2"}
            registry.close()
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(30)
            swarm.stop(status=None)
            broker.stop()
    return [
        Figure(
            BENCH, f"rollout to {devices} devices (canary 10, waves 50/100)", rollout_s, "s",
            baseline_name=f"registering {devices} devices", baseline=register_s,
            target="< 60 s", met=rollout_s < 60,
        ),
        Figure(
            BENCH, "drift summaries ingested", ingest, "msg/s",
            baseline_name="bare paho subscriber", baseline=bare, better="higher",
            target=">= 2000 msg/s", met=ingest >= 2000,
        ),
    ]  # fmt: skip
