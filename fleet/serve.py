"""``fleet serve``: ingest what devices report into the registry and drive the rollouts.

It subscribes to every device's status, heartbeat, ack and drift topics, drops duplicates by
(device, seq), writes the registry, and hands acks to the rollout driver, whose answers (desired
states, offers, chunks) it publishes. Several workers can share the load: with a share group the
heartbeat, ack and drift subscriptions are MQTT 5 shared subscriptions, so the broker hands each
message to one worker. Each message is acknowledged to the broker only after it was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from pydantic import TypeAdapter

from edge_agent.contracts.dedup import Deduplicator
from edge_agent.contracts.payloads import (
    AckPayload,
    DriftSummaryPayload,
    FeatureSummary,
    HeartbeatPayload,
    PayloadError,
    StatusPayload,
    decode,
)
from edge_agent.contracts.topics import TopicParts, fleet_filter, parse_topic
from edge_agent.mqtt import MqttClient, MqttMessage, MqttSettings
from fleet.registry import DriftRecord, RawJson, Registry, RegistryError, RolloutRecord
from fleet.rollouts import Publication, RolloutDriver
from fleet.transfer import DEFAULT_CHUNK_SIZE

__all__ = ["FleetServer"]

logger = logging.getLogger(__name__)

# Summaries go to the registry as pydantic writes them: one JSON encoding, done in Rust.
_SUMMARIES: TypeAdapter[dict[str, FeatureSummary]] = TypeAdapter(dict[str, FeatureSummary])

DriftJudge = Callable[[Registry, RolloutRecord, list[str], float], str | None]


class FleetServer:
    """One manager worker. Construct (no I/O), then ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        registry: Registry,
        settings: MqttSettings,
        prefix: str,
        *,
        share_group: str | None = None,
        tick_s: float = 0.5,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        drift_judge: DriftJudge | None = None,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.registry = registry
        self.prefix = prefix
        self.share_group = share_group
        self.tick_s = tick_s
        self.client = MqttClient(settings, name="fleet", manual_ack=True, inbox_size=20_000)
        self.driver = RolloutDriver(
            registry, prefix, chunk_size=chunk_size, drift_score=drift_judge
        )
        self.dedup = Deduplicator()
        self.counters: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._publishing: set[asyncio.Future[None]] = set()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; ``ready`` is set once every subscription is granted."""
        # Retained status messages are not delivered on shared subscriptions, so every worker
        # reads all statuses itself (they are few, and recording one is idempotent).
        self.client.add_subscription(fleet_filter(self.prefix, "status"), 1)
        for kind in ("heartbeat", "ack", "drift"):
            topic = fleet_filter(self.prefix, kind, share_group=self.share_group)
            self.client.add_subscription(topic, 1)
        await self.client.start()
        try:
            async with asyncio.TaskGroup() as group:
                ingest = group.create_task(self._ingest(), name="fleet-ingest")
                ticker = group.create_task(self._tick(ready), name="fleet-rollouts")
                await stop.wait()
                ingest.cancel()
                ticker.cancel()
        finally:
            if self._publishing:
                await asyncio.wait(self._publishing, timeout=5)
            await self.client.stop()
            logger.info("Fleet worker stopped: %s", dict(self.counters))

    # ---------------------------------------------------------------------------- ingest

    async def _ingest(self) -> None:
        while True:
            batch = await self.client.messages()
            drift: list[DriftRecord] = []
            for message in batch:
                self.counters["messages"] += 1
                try:
                    self._handle(message, drift)
                except RegistryError as err:
                    self.counters["registry_errors"] += 1
                    self._log_once("registry", "Registry error (the worker keeps serving): %s", err)
            if drift:
                self._store_drift(drift)
            for message in batch:
                self.client.ack(message)

    def _store_drift(self, drift: list[DriftRecord]) -> None:
        """Store a batch; a failed batch (a lost connection, a conflict with another worker's
        transaction) is tried again once before its summaries are counted as lost."""
        for attempt in (1, 2):
            try:
                self.counters["drift.stored"] += self.registry.add_drift(drift)
                return
            except RegistryError as err:
                self.counters["registry_errors"] += 1
                if attempt == 2:
                    self.counters["drift.lost"] += len(drift)
                    logger.error("Lost %d drift summaries: the registry refused them: %s",
                                 len(drift), err)  # fmt: skip

    def _handle(self, message: MqttMessage, drift: list[DriftRecord]) -> None:
        parts = parse_topic(self.prefix, message.topic)
        if parts is None:
            self._reject("topic", message.topic, "not a device topic of this prefix")
            return
        if parts.kind == "status":
            if message.payload:  # an empty retained message only clears the topic
                self._status(parts, message)
            return
        try:
            if parts.kind == "heartbeat":
                heartbeat = decode(HeartbeatPayload, message.payload)
                if self._new(parts, heartbeat.device, heartbeat.seq, message.topic):
                    self.registry.record_heartbeat(
                        parts.device,
                        parts.site,
                        ts=heartbeat.ts,
                        model=heartbeat.model,
                        model_version=heartbeat.model_version,
                        health=heartbeat.counters,
                    )
            elif parts.kind == "ack":
                ack = decode(AckPayload, message.payload)
                if self._new(parts, ack.device, ack.seq, message.topic):
                    self.counters["acks"] += 1
                    self._publish(self.driver.on_ack(ack))
            elif parts.kind == "drift":
                summary = decode(DriftSummaryPayload, message.payload)
                if self._new(parts, summary.device, summary.seq, message.topic):
                    drift.append(_drift_record(summary, time.time()))
        except PayloadError as err:
            self._reject(parts.kind, message.topic, str(err))

    def _status(self, parts: TopicParts, message: MqttMessage) -> None:
        try:
            status = decode(StatusPayload, message.payload)
        except PayloadError as err:
            self._reject("status", message.topic, str(err))
            return
        if status.device != parts.device:
            self._reject("status", message.topic, f"names device {status.device!r}")
            return
        self.registry.record_status(
            parts.device,
            parts.site,
            state=status.state,
            ts=status.ts,
            agent_version=status.agent_version,
            model=status.model,
            model_version=status.model_version,
            labels=status.labels,
        )

    def _new(self, parts: TopicParts, device: str, seq: int, topic: str) -> bool:
        if device != parts.device:
            self._reject(parts.kind, topic, f"payload names device {device!r}")
            return False
        if not self.dedup.is_new(f"{parts.site}/{parts.device}", seq):
            self.counters["duplicates"] += 1
            return False
        return True

    def _reject(self, kind: str, topic: str, reason: str) -> None:
        self.counters[f"rejects.{kind}"] += 1
        self._log_once(f"{kind}:{topic}", "Refused a message on %s: %s", topic, reason)

    def _log_once(self, key: str, text: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(text, *args)

    # -------------------------------------------------------------------------- rollouts

    async def _tick(self, ready: asyncio.Event | None) -> None:
        # No command goes out before the ack subscription is granted: an ack that came back
        # before it would be lost, and its device would wait out the rollout's timeout.
        while not await self.client.wait_subscribed(5):
            logger.warning("Waiting for the broker %s", self.client.settings.describe())
        if ready is not None:
            ready.set()
        while True:
            try:
                self._publish(self.driver.tick())
            except RegistryError as err:
                self.counters["registry_errors"] += 1
                self._log_once("registry", "Registry error (the worker keeps serving): %s", err)
            await asyncio.sleep(self.tick_s)

    def _publish(self, publications: list[Publication]) -> None:
        for item in publications:
            future = self.client.publish(item.topic, item.payload, qos=1, retain=item.retain)
            self.counters["published"] += 1
            self._publishing.add(future)
            future.add_done_callback(self._published)

    def _published(self, future: asyncio.Future[None]) -> None:
        self._publishing.discard(future)
        with contextlib.suppress(asyncio.CancelledError):
            error = future.exception()
            if error is not None:
                self.counters["publish_errors"] += 1
                self._log_once("publish", "A command could not be published: %s", error)


def _drift_record(summary: DriftSummaryPayload, received: float) -> DriftRecord:
    return DriftRecord(
        device=summary.device,
        seq=summary.seq,
        site=summary.site,
        model=summary.model,
        model_version=summary.model_version,
        window_start=summary.window_start,
        window_end=summary.window_end,
        features=RawJson(_SUMMARIES.dump_json(summary.features).decode()),
        outputs=RawJson(_SUMMARIES.dump_json(summary.outputs).decode()),
        received=received,
    )
