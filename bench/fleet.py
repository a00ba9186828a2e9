"""The fleet manager against a swarm of simulated devices on a real broker.

A swarm (``fleet.swarm``) of 1,000 devices speaking the real control protocol over a few shared
connections, a real mosquitto, and ``fleet serve`` as its own process with a SQLite registry.

- Rollout: how long a staged rollout (canary 10, waves 50 and 100 %) takes to reach every device
  (each one fetches the bundle, walks the activation steps and acks ``kept``), against a
  single-stage rollout of the next version to the same devices in the same run (the price of
  staging and gates).
- Drift ingest: summaries decoded, de-duplicated and stored per second. The summaries wait at the
  broker in the worker's persistent session while it is stopped, so the figure is the worker's own
  pace, not the swarm's publishing pace; the baseline is a bare paho subscriber draining the same
  backlog the same way.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import Figure
from edge_agent.contracts.payloads import FeatureSummary
from fleet.broker import MosquittoProcess
from fleet.registry import ModelRecord, Registry, SqliteRegistry
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
        time.sleep(0.02)
    return time.perf_counter() - started


def _send(swarm: Swarm, per_device: int, start: float) -> None:
    for window in range(per_device):
        for device in swarm.devices:
            swarm.send_drift(device, SUMMARY, window_end=start + window)


def _drain_rate(count: Callable[[], int], total: int) -> float:
    """Messages per second from the first one handled to the last."""
    _wait(lambda: count() > 0, "the first message")
    first, started = count(), time.perf_counter()
    _wait(lambda: count() >= total, "the whole backlog")
    return (total - first) / (time.perf_counter() - started)


class _BareSubscriber:
    """A paho subscriber with a persistent session, counting drift messages."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = 0
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-bare",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: self.subscribed.set()

    def _on_message(self, *_args: object) -> None:
        self.received += 1

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=properties)
        self.client.loop_start()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _serve(port: int, db: Path, log: Path, worker: int = 0) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fleet", "--broker", f"127.0.0.1:{port}", "--prefix", PREFIX,
             "--registry", str(db), "serve", "--tick", "0.2", "--client-id", f"bench-{worker}",
             "--share-group", "fleet", "--log-level", "INFO"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(60)


def _rollout(registry: Registry, version: str, swarm: Swarm, **stages: object) -> float:
    rollout = plan_rollout(
        registry, "linear", version, "all", gates=Gates(drift_margin=-1), timeout_s=120,
        **stages,  # type: ignore[arg-type]
    )  # fmt: skip

    def finished() -> bool:
        found = registry.rollout(rollout.id)
        return found is not None and found.state in {"completed", "halted"}

    elapsed = _wait(finished, f"the rollout of version {version}")
    final = registry.rollout(rollout.id)
    if final is None or final.state != "completed" or set(swarm.versions().values()) != {version}:
        raise RuntimeError(f"the rollout of {version} did not complete: {final}")
    return elapsed


def _publish(registry: Registry, work: Path, version: str) -> None:
    bundle = linear_bundle(work / f"linear-{version}.bundle", version=version)
    data = bundle.read_bytes()
    registry.add_model(
        ModelRecord("linear", version, hashlib.sha256(data).hexdigest(), len(data), str(bundle),
                    {}, published=time.time())
    )  # fmt: skip


def run(quick: bool) -> list[Figure]:
    devices = 200 if quick else 1000
    per_device = 5 if quick else 20
    summaries = devices * per_device
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "broker")
        broker.start()
        swarm = Swarm("127.0.0.1", broker.port, PREFIX, count=devices, model="linear", shards=10)
        swarm.start()
        db = work / "fleet.db"
        serve = _serve(broker.port, db, work / "serve.log")
        try:
            # Baseline: a bare subscriber drains a backlog queued in its session.
            bare = _BareSubscriber(broker.port)
            bare.connect()
            bare.client.subscribe(f"{PREFIX}/+/+/drift", 1)
            bare.subscribed.wait(30)
            bare.disconnect()
            _wait(db.exists, "the registry")
            registry = SqliteRegistry(db)
            _wait(lambda: len(registry.devices()) >= devices, "every device registered")
            _stop(serve)  # its persistent session keeps the summaries at the broker
            _send(swarm, per_device, time.time())
            time.sleep(2.0)  # let the broker take the last publishes before anyone drains
            bare.connect()
            bare_rate = _drain_rate(lambda: bare.received, summaries)
            bare.disconnect()

            serve = _serve(broker.port, db, work / "serve.log")
            ingest = _drain_rate(registry.drift_count, summaries)

            _publish(registry, work, "2")
            _publish(registry, work, "3")
            staged = _rollout(registry, "2", swarm, canary=10, waves=(50, 100))
            single = _rollout(registry, "3", swarm, canary=0, waves=(100,))

            # Two workers sharing the ingest (MQTT 5 shared subscription), on a new backlog.
            second = _serve(broker.port, db, work / "serve-2.log", worker=1)
            _wait(lambda: "Fleet worker" in (work / "serve-2.log").read_text(), "worker 2")
            _stop(serve)
            _stop(second)
            _send(swarm, per_device, time.time() + per_device)
            time.sleep(2.0)
            serve = _serve(broker.port, db, work / "serve.log")
            second = _serve(broker.port, db, work / "serve-2.log", worker=1)
            base = registry.drift_count()
            shared = _drain_rate(lambda: registry.drift_count() - base, summaries)
            _stop(second)

            registry.close()
        finally:
            _stop(serve)
            swarm.stop(status=None)
            broker.stop()
    return [
        Figure(
            BENCH, f"rollout to {devices} devices (canary 10, waves 50/100)", staged, "s",
            baseline_name="one stage to all", baseline=single,
            target="< 60 s", met=staged < 60,
        ),
        Figure(
            BENCH, f"drift summaries ingested ({summaries} queued)", ingest, "msg/s",
            baseline_name="bare paho subscriber", baseline=bare_rate, better="higher",
            target=">= 2000 msg/s", met=ingest >= 2000,
        ),
        Figure(
            BENCH, "drift summaries ingested, two workers sharing", shared, "msg/s",
            baseline_name="bare paho subscriber", baseline=bare_rate, better="higher",
            target=">= 2000 msg/s", met=shared >= 2000,
        ),
    ]  # fmt: skip
