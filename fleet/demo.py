"""``fleet demo``: the whole story on one machine, on embedded defaults.

A broker, a simulated pump whose bearing wears, a model trained and bundled by ``edge-convert``,
an ``edge-agent`` serving it, and its live predictions in the terminal. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.payloads import (
    HeartbeatPayload,
    PayloadError,
    ResultPayload,
    StatusPayload,
    decode,
)
from edge_agent.contracts.topics import DeviceTopics, fleet_filter
from edge_agent.mqtt import MqttClient, MqttSettings
from fleet.broker import INSTALL_HINT, MosquittoProcess, find_mosquitto, free_port

__all__ = ["run_demo"]

FEATURES = ["temperature", "vibration", "pressure"]
PREFIX = "demo"
SITE = "plant-demo"
DEVICE = "pump-gateway-1"
ASSETS = ["pump-1", "pump-2"]


def _say(text: str) -> None:
    print(text, flush=True)


def _pump_rows(wear: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Pump readings: a worn bearing runs hotter and shakes more."""
    n = len(wear)
    temperature = 60 + 15 * wear + rng.normal(0, 1.5, n)
    vibration = 0.2 + 0.8 * wear**2 + rng.normal(0, 0.05, n)
    pressure = 5 - 0.5 * wear + rng.normal(0, 0.2, n)
    return np.column_stack([temperature, vibration, pressure])


def _train(workdir: Path) -> tuple[Path, Path]:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(42)
    wear = rng.uniform(0, 1, 2000)
    rows = _pump_rows(wear, rng)
    labels = np.where(wear > 0.6, "worn", "healthy")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(rows, labels)
    model_path = workdir / "pump-health.joblib"
    joblib.dump(model, model_path)
    reference = workdir / "reference.csv"
    np.savetxt(reference, rows[:500], delimiter=",", header=",".join(FEATURES), comments="")
    return model_path, reference


def _program(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _agent_config(workdir: Path, port: int, bundle: Path, metrics_port: int) -> Path:
    path = workdir / "agent.toml"
    path.write_text(
        f"""topic_prefix = "{PREFIX}"

[device]
id = "{DEVICE}"
site = "{SITE}"
labels = {{ line = "line-1" }}
state_dir = "{workdir / "agent-state"}"

[broker]
port = {port}

[model]
bundle = "{bundle}"

[[sources]]
type = "mqtt"
name = "pumps"
topics = ["{PREFIX}-plant/line-1/+/reading"]
qos = 1
asset_level = 2

[heartbeat]
interval_s = 5

[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    return path


def _health_line(beat: HeartbeatPayload) -> str:
    """The agent's heartbeat as one line: what a dashboard would chart."""
    counters, gauges = beat.counters, beat.gauges
    refused = sum(v for k, v in counters.items() if k.startswith("rejects."))
    return (
        f"  health: {counters.get('inference.windows', 0):g} windows, "
        f"p99 {gauges.get('inference.p99_ms', 0):.3f} ms, "
        f"outbox {gauges.get('outbox.rows', 0):g} rows waiting, {refused:g} inputs refused"
    )


def _show(topic: str, payload: bytes, topics: DeviceTopics, started: float) -> int:
    """Print one message the agent published; 1 if it was a result."""
    try:
        if topic == topics.status:
            _say(f"  status: {decode(StatusPayload, payload).state}")
            return 0
        if topic == topics.heartbeat:
            _say(_health_line(decode(HeartbeatPayload, payload)))
            return 0
        result = decode(ResultPayload, payload)
    except PayloadError as err:
        _say(f"  (skipped a message on {topic}: {err})")
        return 0
    worn = float(result.outputs.get("probabilities_worn", math.nan))
    bar = "#" * round(worn * 20)
    _say(
        f"{time.monotonic() - started:6.1f}  {result.asset:<8} {worn:8.3f}  "
        f"{result.outputs.get('label')!s:<8} {result.latency_ms:.2f} ms  {bar}"
    )
    return 1


async def _live(port: int, stop: asyncio.Event, duration: float | None) -> int:
    """Publish simulated readings and print the agent's results until ``stop``."""
    settings = MqttSettings(host="127.0.0.1", port=port, client_id=f"demo-{uuid.uuid4().hex[:6]}")
    client = MqttClient(settings, name="demo")
    topics = DeviceTopics(PREFIX, SITE, DEVICE)
    client.add_subscription(fleet_filter(PREFIX, "results", site=SITE), 1)
    client.add_subscription(topics.status, 1)
    client.add_subscription(topics.heartbeat, 1)
    await client.start()
    await client.wait_subscribed(10)
    rng = np.random.default_rng()
    started = time.monotonic()
    results = 0

    async def publish() -> None:
        step = 0
        while True:
            for index, asset in enumerate(ASSETS):
                # pump-2's bearing wears out over the first minute; pump-1 stays healthy.
                wear = 0.1 if index == 0 else min(1.0, step / 300)
                row = _pump_rows(np.array([wear]), rng)[0]
                reading = dict(zip(FEATURES, (round(float(v), 3) for v in row), strict=True))
                client.publish(
                    f"{PREFIX}-plant/line-1/{asset}/reading", json.dumps(reading).encode()
                )
            step += 1
            await asyncio.sleep(0.2)

    publisher = asyncio.create_task(publish(), name="demo-publisher")
    _say(f"\n{'time':>6}  {'asset':<8} {'P(worn)':>8}  {'label':<8} latency")
    try:
        while not stop.is_set():
            if duration is not None and time.monotonic() - started > duration:
                break
            try:
                batch = await asyncio.wait_for(client.messages(), 0.5)
            except TimeoutError:
                continue
            for message in batch:
                results += _show(message.topic, message.payload, topics, started)
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        await client.stop()
    return results


def run_demo(workdir: Path | None = None, duration: float | None = None) -> int:
    """Run the demo; returns an exit code. ``duration`` stops it by itself after that many s."""
    binary = find_mosquitto()
    if binary is None:
        _say(f"fleet demo: {INSTALL_HINT}")
        return 1
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        broker = MosquittoProcess(workdir / "broker", binary=binary)
        broker.start()
        stack.callback(broker.stop)
        _say(f"[1/4] broker: mosquitto on 127.0.0.1:{broker.port}")

        _say("[2/4] training a pump-health model (scaler + logistic regression) ...")
        model_path, reference = _train(workdir)
        bundle = workdir / "pump-health-1.bundle"
        subprocess.run(
            _program(
                "converters", "convert", str(model_path), "--reference", str(reference),
                "-o", str(bundle), "--name", "pump-health", "--version", "1",
            ),
            check=True,
        )  # fmt: skip

        _say("[3/4] starting edge-agent ...")
        log = (workdir / "agent.log").open("wb")
        stack.callback(log.close)
        metrics_port = free_port()
        config = _agent_config(workdir, broker.port, bundle, metrics_port)
        agent = subprocess.Popen(
            _program("edge_agent", "run", "--config", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def stop_agent() -> None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)

        stack.callback(stop_agent)
        _say(f"      metrics: http://127.0.0.1:{metrics_port}/metrics (Prometheus text)")
        _say(f"[4/4] live predictions (agent log: {workdir / 'agent.log'}); Ctrl-C stops\n")

        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            return await _live(broker.port, stop, duration)

        results = asyncio.run(main())
        subprocess.run(
            _program(
                "fleet",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--prefix",
                PREFIX,
                "devices",
                "list",
                "--live",
            ),
            check=False,
        )
        stop_agent()
        _say(f"\nstopped cleanly: {results} results received; agent exit code {agent.returncode}")
        return 0 if results > 0 and agent.returncode == 0 else 1
