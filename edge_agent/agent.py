"""The agent: wires sources, windows, the model, the outbox and the sinks into one asyncio process.

Start order is buffer, sinks, model, windows, sources; stop order is the reverse, draining as it
goes, so that nothing read from a source is lost between stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal

import numpy as np

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.contracts.payloads import (
    HeartbeatPayload,
    OutputValue,
    ResultPayload,
    SequencedPayload,
    StatusPayload,
)
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.errors import InputRejected, ModelError, OutboxError
from edge_agent.health import Health
from edge_agent.lifecycle import ModelLifecycle
from edge_agent.model import LoadedModel
from edge_agent.mqtt import MqttClient
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.writeback import WriteBack, build_writeback
from edge_agent.sources import Source, build_source
from edge_agent.windows import Window, WindowBuilder, build_window_builder

__all__ = ["Agent"]

logger = logging.getLogger(__name__)

# Windows waiting for inference before sources are made to wait (back-pressure, not drops).
MAX_PENDING_WINDOWS = 10_000
# How often time alone may close a window (an asset gone silent still gets its last window).
WINDOW_CLOCK_S = 0.1
STOP_STATUS_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5.0
SOURCE_READY_TIMEOUT_S = 10.0


class Agent:
    """One agent process. Construct (validates, no I/O), then ``await run(stop)``."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.health = Health()
        device = config.device
        self.topics = DeviceTopics(config.topic_prefix, device.site, device.id)
        # The one place the serving model is reached: a swap lands between two batches.
        self.lifecycle = ModelLifecycle(
            config, self.topics, self.health, send=self._store_records, on_swap=self._publish_online
        )
        status_will = self._status("offline").to_json()
        self.uplink = MqttClient(
            config.broker.settings(device_id=device.id, role="uplink"),
            name="uplink",
            will=(self.topics.status, status_will, 1, True),
            max_inflight=config.outbox.max_inflight,
        )
        self.sink = MqttSink(self.uplink)
        # What sources and sinks share (one OPC-UA session per server URL).
        shared: dict[str, object] = {}
        self.sources: list[Source] = [
            build_source(source, config, self.health, shared) for source in config.sources
        ]
        self.outbox = Outbox.from_config(
            config, self.sink, self.health, alerts_topic=self.topics.alerts
        )
        self.writebacks: list[WriteBack] = [
            build_writeback(sink, self.health, shared) for sink in config.sinks
        ]
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._windows: deque[Window] = deque()
        self._windows_ready = asyncio.Event()
        self._window_space = asyncio.Event()
        self._builder: WindowBuilder | None = None
        self._sources_done = False
        self._ready = False
        # Set once every source is subscribed: what systemd's READY=1 reports.
        self.serving = asyncio.Event()
        # When the inference call in progress started (monotonic), None while idle: a stuck
        # model shows here and stops the systemd watchdog pings.
        self.inference_busy_since: float | None = None

    # ------------------------------------------------------------------------------ run/stop

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain and stop cleanly."""
        config = self.config
        config.device.state_dir.mkdir(parents=True, exist_ok=True)
        await self.outbox.start()
        self.health.gauge("queue.windows", lambda: len(self._windows))
        self.uplink.on_connect(self._publish_online)
        # Retained desired state arrives on every (re)connect: that is what reconciles it.
        for control_topic in (self.topics.desired, self.topics.cmd, self.topics.transfer):
            self.uplink.add_subscription(control_topic, 1)
        await self.uplink.start()
        for writeback in self.writebacks:
            await writeback.start()

        model = await self.lifecycle.start()
        logger.info("Model %s loaded (%s)", model.manifest.label, model.runner.format)
        if config.model.public_key is None:
            logger.warning(
                "model.public_key is not set: bundles are checked against their sha256 hashes, "
                "but not signatures, so whoever may publish on this device's command topics can "
                "install a model; set it to the fleet's public key in production"
            )
        self._builder = build_window_builder(
            config.windows,
            model.manifest,
            model.baseline_means(),
            self.health.count,
            self.lifecycle.observe_missing,
        )

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.outbox.run(), name="outbox")
                infer = group.create_task(self._infer(), name="inference")
                group.create_task(self._heartbeat(), name="heartbeat")
                group.create_task(self._window_clock(), name="window-clock")
                group.create_task(self._write_status_file(), name="status-file")
                group.create_task(self.lifecycle.run(), name="lifecycle")
                group.create_task(self._control(), name="control")
                readers = []
                for source in self.sources:
                    await source.start()
                    readers.append(
                        group.create_task(self._read(source), name=f"source-{source.name}")
                    )
                for source in self.sources:
                    if not await source.wait_ready(SOURCE_READY_TIMEOUT_S):
                        logger.warning("Source %s is not ready yet; serving anyway", source.name)
                # Online means ready: the status is published now and on every reconnect.
                self._ready = True
                self.serving.set()
                if self.uplink.connected:
                    await self._publish_online()
                logger.info(
                    "Agent %s serving %d source(s); results to %s",
                    config.device.id,
                    len(self.sources),
                    self.topics.results("<asset>"),
                )
                await stop.wait()
                logger.info("Stopping: draining windows and the outbox")
                for reader in readers:
                    reader.cancel()
                for source in self.sources:
                    await source.stop()
                self._sources_done = True
                self._windows_ready.set()
                await infer
                await self.lifecycle.stop()
                await self.outbox.drain(DRAIN_TIMEOUT_S)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for writeback in self.writebacks:
            await writeback.stop()
        if self.uplink.connected:
            future = self.uplink.publish(
                self.topics.status, self._status("stopped").to_json(), qos=1, retain=True
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(future, STOP_STATUS_TIMEOUT_S)
        await self.uplink.stop()
        await self.outbox.close()
        self._inference.shutdown(wait=True)
        self.lifecycle.close()
        self._write_status_snapshot()

    # ---------------------------------------------------------------------------- the stages

    async def _read(self, source: Source) -> None:
        builder = self._builder
        assert builder is not None
        async for readings in source.readings():
            now = time.time()
            for reading in readings:
                try:
                    windows = builder.add(reading, now)
                except InputRejected as rejected:
                    self.health.reject(rejected.reason, reading.origin, rejected.detail)
                    reading.acknowledge()
                    continue
                if not any(reading in window.readings for window in windows):
                    reading.acknowledge()  # its samples live in the builder's open windows now
                self._windows.extend(windows)
            await self._queue_windows([])

    async def _window_clock(self) -> None:
        builder = self._builder
        assert builder is not None
        while True:
            await asyncio.sleep(WINDOW_CLOCK_S)
            await self._queue_windows(builder.poll(time.time()))

    async def _queue_windows(self, windows: list[Window]) -> None:
        """Queue windows for inference; wait (back-pressure on the sources) while it is full."""
        self._windows.extend(windows)
        if self._windows:
            self._windows_ready.set()
        while len(self._windows) >= MAX_PENDING_WINDOWS:
            self._window_space.clear()
            await self._window_space.wait()

    async def _infer(self) -> None:
        """Run ready windows through the model in batches, store results, acknowledge inputs.

        The model is read from ``self.model`` for every batch, so a new model set there between
        two batches serves the next one.
        """
        loop = asyncio.get_running_loop()
        max_batch = self.config.model.max_batch
        while True:
            if not self._windows:
                if self._sources_done:
                    return
                self._windows_ready.clear()
                await self._windows_ready.wait()
                continue
            model = self.model
            assert model is not None
            batch = [self._windows.popleft() for _ in range(min(max_batch, len(self._windows)))]
            self._window_space.set()
            rows = np.asarray([window.values for window in batch], dtype=np.float32)
            started = time.perf_counter()
            self.inference_busy_since = time.monotonic()
            try:
                outputs = await loop.run_in_executor(self._inference, model.predict, rows)
            except ModelError as err:
                self.inference_busy_since = None
                self.health.count("inference.errors", len(batch))
                self.health.problem_once("inference", "Inference failed: %s", err)
                self.lifecycle.observe_error(model, len(batch))
                for window in batch:
                    for reading in window.readings:
                        reading.acknowledge()
                continue
            self.inference_busy_since = None
            latency = time.perf_counter() - started
            assets = [window.asset for window in batch]
            for writeback in self.writebacks:
                writeback.offer(assets, outputs)
            self.health.inference.add(latency)
            self.health.count("inference.windows", len(batch))
            self.health.count("inference.batches")
            self.lifecycle.observe(model, rows, outputs, latency)
            try:
                await self.outbox.store(self._result_items(model, batch, outputs, latency))
            except OutboxError as err:
                self.health.count("outbox.write_errors", len(batch))
                self.health.problem_once("outbox", "Results not stored: %s", err)
                continue  # inputs stay unacknowledged: a QoS 1 broker will send them again
            for window in batch:
                for reading in window.readings:
                    reading.acknowledge()

    def _result_items(
        self,
        model: LoadedModel,
        batch: list[Window],
        outputs: list[dict[str, OutputValue]],
        latency: float,
    ) -> list[OutboxItem]:
        """One outbox item per result; the outbox numbers and encodes them in one commit."""
        manifest = model.manifest
        latency_ms = round(latency * 1000 / len(batch), 4)
        latest = self.config.outbox.latest
        return [
            OutboxItem(
                self.topics.results(window.asset),
                partial(
                    ResultPayload,
                    asset=window.asset,
                    model=manifest.name,
                    model_version=manifest.version,
                    window_end=window.end,
                    outputs=result,
                    latency_ms=latency_ms,
                ),
                latest=self.topics.latest(window.asset) if latest else None,
            )
            for window, result in zip(batch, outputs, strict=True)
        ]

    async def _store_records(
        self, items: list[tuple[str, Callable[..., SequencedPayload]]]
    ) -> None:
        """Store acks, drift summaries and alerts in the outbox (they must arrive)."""
        try:
            await self.outbox.store([OutboxItem(topic, build) for topic, build in items])
        except OutboxError as err:
            self.health.count("outbox.write_errors", len(items))
            self.health.problem_once("outbox", "Records not stored: %s", err)

    async def _control(self) -> None:
        """Hand every message of the control topics to the lifecycle, one at a time, in order."""
        while True:
            for message in await self.uplink.messages():
                await self.lifecycle.handle(message)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat.interval_s)
            counters, gauges = self.health.snapshot()
            model = self.model
            heartbeat = partial(
                HeartbeatPayload,
                uptime_s=gauges["uptime_s"],
                agent_version=__version__,
                model=model.manifest.name if model else None,
                model_version=model.manifest.version if model else None,
                sources={source.name: source.state for source in self.sources},
                counters=counters,
                gauges=gauges,
            )
            try:
                await self.outbox.store([OutboxItem(self.topics.heartbeat, heartbeat)])
            except OutboxError as err:
                self.health.problem_once("outbox", "Heartbeat not stored: %s", err)

    async def _write_status_file(self) -> None:
        """Keep ``<state_dir>/status.json`` fresh for ``edge-agent status``."""
        while True:
            self._write_status_snapshot()
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------------------ helpers

    @property
    def model(self) -> LoadedModel | None:
        """The serving model (None before start)."""
        return self.lifecycle.model

    def status_snapshot(self) -> dict[str, object]:
        counters, gauges = self.health.snapshot()
        model = self.model
        return {
            "device": self.config.device.id,
            "site": self.config.device.site,
            "pid": os.getpid(),
            "ts": time.time(),
            "agent_version": __version__,
            "uplink": "connected" if self.uplink.connected else "disconnected",
            "sources": {source.name: source.state for source in self.sources},
            "model": model.manifest.label if model else None,
            "counters": counters,
            "gauges": gauges,
        }

    def _write_status_snapshot(self) -> None:
        path = self.config.device.state_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.status_snapshot(), indent=2))
            tmp.replace(path)
        except OSError as err:
            self.health.problem_once("status-file", "Cannot write %s: %s", path, err)

    def _status(self, state: Literal["online", "stopped", "offline"]) -> StatusPayload:
        model = self.model
        device = self.config.device
        return StatusPayload(
            state=state,
            device=device.id,
            site=device.site,
            ts=time.time(),
            agent_version=__version__,
            model=model.manifest.name if model else None,
            model_version=model.manifest.version if model else None,
            labels=device.labels,
        )

    async def _publish_online(self) -> None:
        if not self._ready:
            return
        await self.uplink.publish(
            self.topics.status, self._status("online").to_json(), qos=1, retain=True
        )


class _Stopped(Exception):
    """Raised inside the task group to end it once draining is done."""
