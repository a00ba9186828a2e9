"""``edge-agent once``: read the real sources until one window is complete, infer, and report it.

Nothing is published and nothing is acknowledged for the running agent: MQTT sources connect
with a client id of their own and a clean session, so a running agent on the same device keeps
its session and its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.contracts.payloads import OutputValue
from edge_agent.errors import InputRejected, NotReadyError
from edge_agent.health import Health
from edge_agent.model import LoadedModel, load_model
from edge_agent.sources import Source, build_source
from edge_agent.windows import Window, WindowBuilder, build_window_builder

__all__ = ["OnceResult", "infer_once"]

POLL_S = 0.1


@dataclass(frozen=True)
class OnceResult:
    model: str
    asset: str
    window_end: float
    features: dict[str, float]
    outputs: dict[str, OutputValue]
    latency_ms: float
    counters: dict[str, float]


async def _first_window(sources: list[Source], builder: WindowBuilder, health: Health) -> Window:
    """The first window any source completes (refusals are counted, as in ``run``)."""
    found: asyncio.Queue[Window] = asyncio.Queue()

    async def read(source: Source) -> None:
        async for readings in source.readings():
            for reading in readings:
                try:
                    windows = builder.add(reading, time.time())
                except InputRejected as rejected:
                    health.reject(rejected.reason, reading.origin, rejected.detail)
                    continue
                for window in windows:
                    found.put_nowait(window)

    async def clock() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for window in builder.poll(time.time()):
                found.put_nowait(window)

    tasks = [asyncio.create_task(read(s), name=f"once-{s.name}") for s in sources]
    tasks.append(asyncio.create_task(clock(), name="once-window-clock"))
    try:
        getter = asyncio.create_task(found.get(), name="once-first-window")
        done, _pending = await asyncio.wait([getter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            for task in done:
                task.result()  # a source that ended raises here with its reason
            raise NotReadyError("the sources ended before a window was complete")
        return getter.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def infer_once(config: AgentConfig, timeout: float) -> OnceResult:
    """Start the sources, wait up to ``timeout`` s for one window, run the model on it."""
    health = Health()
    model_config = config.model
    model: LoadedModel = await asyncio.to_thread(
        load_model,
        model_config.bundle,
        public_key=model_config.public_key,
        runner=model_config.runner,
        threads=model_config.threads,
        expected_features=model_config.features,
    )
    builder = build_window_builder(
        config.windows, model.manifest, model.baseline_means(), health.count
    )
    shared: dict[str, object] = {"mode": "once"}
    sources = [build_source(source, config, health, shared) for source in config.sources]
    for source in sources:
        await source.start()
    try:
        try:
            window = await asyncio.wait_for(_first_window(sources, builder, health), timeout)
        except TimeoutError:
            raise NotReadyError(
                f"no complete window within {timeout:g} s; are the sources sending?"
            ) from None
    finally:
        for source in sources:
            await source.stop()
    rows = np.asarray([window.values], dtype=np.float32)
    started = time.perf_counter()
    [outputs] = await asyncio.to_thread(model.predict, rows)
    latency_ms = (time.perf_counter() - started) * 1000
    counters, _gauges = health.snapshot()
    return OnceResult(
        model=model.manifest.label,
        asset=window.asset,
        window_end=window.end,
        features=dict(zip(model.manifest.feature_names, window.values, strict=True)),
        outputs=outputs,
        latency_ms=round(latency_ms, 4),
        counters=counters,
    )
