"""A swarm of simulated devices speaking the real control protocol, for load tests and drills.

Each simulated device keeps a retained status, reconciles its retained desired state, asks for a
bundle it lacks, checks every chunk's hash and the whole bundle's, walks the activation steps and
acks each one, and sends drift summaries. It does not run models: a version listed in
``refuse`` fails its golden vectors, which is how a bad model looks from the fleet. Many devices
share one MQTT connection (a shard), so a thousand fit in one process.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import BaseModel

from edge_agent.contracts.payloads import (
    AckPayload,
    DesiredStateCommand,
    DriftSummaryPayload,
    FeatureSummary,
    OfferCommand,
    PayloadError,
    RollbackCommand,
    StatusPayload,
    TransferChunkPayload,
    decode,
    decode_command,
)
from edge_agent.contracts.topics import DeviceTopics

__all__ = ["SimDevice", "Swarm"]

_STEPS = ("verified", "features", "loaded", "warmed", "golden", "active", "kept")


@dataclass
class SimDevice:
    """One simulated device's state. Read it from tests through :meth:`Swarm.device`."""

    topics: DeviceTopics
    model: str
    version: str
    labels: dict[str, str]
    previous: str | None = None
    store: dict[str, bytes] = field(default_factory=dict)  # "model@version" -> bundle
    chunks: dict[int, bytes] = field(default_factory=dict)  # the transfer in progress
    offer: OfferCommand | None = None
    desired: DesiredStateCommand | None = None
    seq: int = 0
    acks: list[AckPayload] = field(default_factory=list)
    chunks_received: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.topics.device

    @property
    def site(self) -> str:
        return self.topics.site


class _Shard:
    """One MQTT connection carrying a group of devices."""

    def __init__(self, swarm: Swarm, name: str, devices: list[SimDevice]) -> None:
        self.swarm = swarm
        self.devices = {device.topics.base: device for device in devices}
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"swarm-{name}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.connected = threading.Event()

    def start(self, host: str, port: int) -> None:
        self.client.connect(host, port)
        self.client.loop_start()
        if not self.connected.wait(20):
            raise ConnectionError(f"swarm shard could not connect to {host}:{port}")

    def stop(self, status: str | None) -> None:
        if status is not None:
            infos = [self.publish_status(device, status) for device in self.devices.values()]
            for info in infos:
                info.wait_for_publish(10)
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def _on_connect(self, client: paho.Client, *args: object) -> None:
        for device in self.devices.values():
            self.publish_status(device, "online")
        subscriptions = [
            (topic, 1) for device in self.devices.values() for topic in device.topics.device_reads()
        ]
        for start in range(0, len(subscriptions), 100):
            client.subscribe(subscriptions[start : start + 100])
        self.connected.set()

    def publish_status(self, device: SimDevice, state: str) -> paho.MQTTMessageInfo:
        status = StatusPayload(
            state=state,
            device=device.id,
            site=device.site,
            ts=time.time(),
            agent_version="swarm",
            model=device.model,
            model_version=device.version,
            labels=device.labels,
        )
        return self.client.publish(device.topics.status, status.to_json(), qos=1, retain=True)

    def _send(self, device: SimDevice, topic: str, payload: BaseModel) -> None:
        self.client.publish(topic, payload.model_dump_json().encode(), qos=1)

    def ack(
        self,
        device: SimDevice,
        cmd_id: str,
        command: str,
        step: str,
        *,
        ok: bool = True,
        reason: str | None = None,
        version: str | None = None,
        details: dict[str, float | int | str] | None = None,
    ) -> None:
        device.seq += 1
        ack = AckPayload(
            record_id=uuid.uuid4().hex,
            seq=device.seq,
            device=device.id,
            site=device.site,
            ts=time.time(),
            cmd_id=cmd_id,
            command=command,
            step=step,
            ok=ok,
            reason=reason,
            model=device.model,
            version=version,
            previous_version=device.version,
            details=details or {},
        )
        device.acks.append(ack)
        self._send(device, device.topics.ack, ack)

    # ----------------------------------------------------------------- the device's protocol

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        base, _, kind = msg.topic.rpartition("/")
        device = self.devices.get(base)
        payload = bytes(msg.payload)
        if device is None or not payload or device.id in self.swarm.silent:
            return
        try:
            if kind == "transfer":
                self._chunk(device, decode(TransferChunkPayload, payload))
                return
            command = decode_command(payload)
        except PayloadError as err:
            self.ack(device, "unknown", "unknown", "decode", ok=False, reason=str(err))
            return
        with self.swarm.lock:
            if isinstance(command, DesiredStateCommand):
                self._desired(device, command)
            elif isinstance(command, OfferCommand):
                device.offer = command
                if device.chunks and command.sha256 != self._offer_key(device):
                    device.chunks = {}
                held = ",".join(str(i) for i in sorted(device.chunks))
                self.ack(
                    device, command.cmd_id, "offer", "offer", version=command.version,
                    details={"have_chunks": held},
                )  # fmt: skip
            elif isinstance(command, RollbackCommand):
                target = command.to_version or device.previous
                if target is not None:
                    device.version, device.previous = target, device.version
                self.ack(device, command.cmd_id, "rollback", "rolled_back", version=target)
                self.publish_status(device, "online")

    def _offer_key(self, device: SimDevice) -> str | None:
        return device.offer.sha256 if device.offer is not None else None

    def _desired(self, device: SimDevice, desired: DesiredStateCommand) -> None:
        device.desired = desired
        if desired.version == device.version:
            self.ack(device, desired.cmd_id, "desired", "active", version=desired.version)
            return
        if f"{desired.model}@{desired.version}" in device.store:
            self._activate(device, desired)
            return
        held = ",".join(str(i) for i in sorted(device.chunks))
        self.ack(
            device, desired.cmd_id, "desired", "need_bundle", version=desired.version,
            details={"have_chunks": held},
        )  # fmt: skip

    def _chunk(self, device: SimDevice, chunk: TransferChunkPayload) -> None:
        with self.swarm.lock:
            data = base64.b64decode(chunk.data)
            offer = device.offer
            cmd_id = offer.cmd_id if offer is not None else "unknown"
            if hashlib.sha256(data).hexdigest() != chunk.sha256:
                self.ack(
                    device, cmd_id, "offer", "chunk", ok=False, reason="chunk sha256 differs",
                    version=chunk.version, details={"index": chunk.index},
                )  # fmt: skip
                return
            if self.swarm.drop_chunk is not None and self.swarm.drop_chunk(device, chunk):
                return
            device.chunks_received.append(chunk.index)
            device.chunks[chunk.index] = data
            if offer is None or len(device.chunks) < chunk.total:
                return
            bundle = b"".join(device.chunks[i] for i in range(chunk.total))
            device.chunks = {}
            if hashlib.sha256(bundle).hexdigest() != offer.sha256:
                self.ack(device, cmd_id, "offer", "received", ok=False, reason="bundle sha256")
                return
            device.store[f"{offer.model}@{offer.version}"] = bundle
            self.ack(device, cmd_id, "offer", "received", version=offer.version)
            desired = device.desired
            if desired is not None and desired.version == offer.version:
                self._activate(device, desired)

    def _activate(self, device: SimDevice, desired: DesiredStateCommand) -> None:
        for step in _STEPS:
            if step == "golden" and desired.version in self.swarm.refuse:
                self.ack(
                    device, desired.cmd_id, "desired", "golden", ok=False,
                    reason="golden vectors: max error 3.2 above tolerance 1e-4",
                    version=desired.version,
                )  # fmt: skip
                return
            if step == "active":
                device.previous, device.version = device.version, desired.version
                self.publish_status(device, "online")
            self.ack(device, desired.cmd_id, "desired", step, version=desired.version)


class Swarm:
    """Simulated devices ``<name>-000``... across ``shards`` connections.

    ``start()`` connects them (each publishes a retained online status); ``stop()`` leaves
    without a status change, like a power cut.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        *,
        count: int,
        site: str = "plant-a",
        name: str = "sim",
        model: str = "press",
        version: str = "1",
        labels: dict[str, str] | None = None,
        shards: int = 1,
        refuse: set[str] | None = None,
        drop_chunk: Callable[[SimDevice, TransferChunkPayload], bool] | None = None,
        silent: set[str] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.silent = silent or set()  # devices that stay online but never answer
        self.lock = threading.RLock()
        self.refuse = refuse or set()
        self.drop_chunk = drop_chunk
        self.devices = [
            SimDevice(
                DeviceTopics(prefix, site, f"{name}-{index:03d}"),
                model,
                version,
                dict(labels or {"line": "line-2"}),
            )
            for index in range(count)
        ]
        per = -(-count // max(1, shards))
        self._shards = [
            _Shard(self, f"{name}{n}", self.devices[start : start + per])
            for n, start in enumerate(range(0, count, per))
        ]

    def start(self) -> Swarm:
        for shard in self._shards:
            shard.start(self.host, self.port)
        return self

    def stop(self, status: str | None = "offline") -> None:
        """Publish ``status`` (offline, as a last will would) for every device and disconnect."""
        for shard in self._shards:
            shard.stop(status)

    def device(self, device_id: str) -> SimDevice:
        return next(d for d in self.devices if d.id == device_id)

    def versions(self) -> dict[str, str]:
        with self.lock:
            return {device.id: device.version for device in self.devices}

    def send_drift(
        self,
        device: SimDevice,
        features: dict[str, FeatureSummary],
        *,
        window_end: float,
        copies: int = 1,
    ) -> None:
        """Publish one drift summary of ``device``'s current version, ``copies`` times (as an
        outbox replay would)."""
        shard = next(s for s in self._shards if device.topics.base in s.devices)
        with self.lock:
            device.seq += 1
            summary = DriftSummaryPayload(
                record_id=uuid.uuid4().hex,
                seq=device.seq,
                device=device.id,
                site=device.site,
                ts=time.time(),
                model=device.model,
                model_version=device.version,
                window_start=window_end - 60,
                window_end=window_end,
                features=features,
            )
        for _ in range(copies):
            shard.client.publish(device.topics.drift, summary.to_json(), qos=1)

    def __enter__(self) -> Swarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
