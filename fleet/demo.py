"""``fleet demo``: the whole story on one machine, on embedded defaults.

A broker, two pumps served over OPC-UA (one whose bearing wears), a model trained on their
window features and bundled by ``edge-convert``, an ``edge-agent`` reading the pumps' tags,
building two-second windows and serving the model, and its live predictions and health in the
terminal. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
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
    AckPayload,
    DriftSummaryPayload,
    HeartbeatPayload,
    PayloadError,
    ResultPayload,
    StatusPayload,
    decode,
)
from edge_agent.contracts.topics import DeviceTopics, fleet_filter
from edge_agent.mqtt import MqttClient, MqttSettings
from fleet.broker import INSTALL_HINT, MosquittoProcess, find_mosquitto, free_port
from fleet.demo_plant import PUMP_TAGS, PumpPlant, Wear, pump_reading

__all__ = ["run_demo"]

# The model's inputs: aggregations of the pumps' tags over each window (names read by the agent).
FEATURES = ["temperature_mean", "vibration_rms", "pressure_last"]
PREFIX = "demo"
SITE = "plant-demo"
DEVICE = "pump-gateway-1"
# pump-1 stays healthy; pump-2 runs well for 30 s, then its bearing wears out over a minute.
PUMPS = {"pump-1": Wear(healthy_s=1e9, wear_s=1.0), "pump-2": Wear(healthy_s=30.0, wear_s=60.0)}
WINDOW_S = 2.0
SAMPLE_S = 0.25
STARTUP_TIMEOUT_S = 120.0
ROLLOUT_AFTER_S = 10.0


def _say(text: str) -> None:
    print(text, flush=True)


def _window_rows(wear: npt.NDArray[np.float64], rng: random.Random) -> npt.NDArray[np.float64]:
    """Window features of pumps at the given wear, from the plant's own pump model."""
    rows = []
    for w in wear:
        start = rng.uniform(0, 1000)  # any time of day: pressure swings on its own
        samples = [
            pump_reading(w, start + k * SAMPLE_S, rng) for k in range(int(WINDOW_S / SAMPLE_S))
        ]
        vibration = np.array([sample["vibration"] for sample in samples])
        rows.append(
            [
                float(np.mean([sample["temperature"] for sample in samples])),
                float(np.sqrt(np.mean(vibration**2))),
                samples[-1]["pressure"],
            ]
        )
    return np.asarray(rows)


def _bundle(workdir: Path, version: int, sign_key: Path) -> Path:
    """Train pump-health ``version`` on window features, then convert, check and sign it.

    Version 2 is retrained on more data and calls a bearing worn earlier (past 50 % wear
    instead of 60 %). The drift baseline comes from new bearings, so a wearing one shows as
    drift.
    """
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    count, threshold = (2000, 0.6) if version == 1 else (6000, 0.5)
    wear = np.random.default_rng(version).uniform(0, 1, count)
    rows = _window_rows(wear, random.Random(version))
    labels = np.where(wear > threshold, "worn", "healthy")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(rows, labels)
    model_path = workdir / f"pump-health-{version}.joblib"
    joblib.dump(model, model_path)
    reference = workdir / f"reference-{version}.csv"
    healthy = _window_rows(np.zeros(500), random.Random(100 + version))
    np.savetxt(reference, healthy, delimiter=",", header=",".join(FEATURES), comments="")
    bundle = workdir / f"pump-health-{version}.bundle"
    subprocess.run(
        _program(
            "converters", "convert", str(model_path), "--reference", str(reference),
            "-o", str(bundle), "--name", "pump-health", "--version", str(version),
            "--sign-key", str(sign_key),
        ),
        check=True,
        stdout=subprocess.DEVNULL if version > 1 else None,
    )  # fmt: skip
    return bundle


def _program(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _agent_config(
    workdir: Path, port: int, bundle: Path, metrics_port: int, plant: PumpPlant
) -> Path:
    sources = []
    for pump in PUMPS:
        tags = ", ".join(
            f'{{ name = "{tag}", node_id = "{plant.node_id(pump, tag)}" }}' for tag in PUMP_TAGS
        )
        sources.append(
            f"""[[sources]]
type = "opcua"
name = "{pump}-plc"
url = "{plant.url}"
asset = "{pump}"
publishing_interval_ms = 100
sampling_interval_ms = 0
queue_size = 100
reconnect_min_s = 0.5
reconnect_max_s = 2.0
tags = [{tags}]
"""
        )
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
public_key = "{bundle.parent / "fleet.pub"}"

{"".join(sources)}
[windows]
mode = "tumbling"
length_s = {WINDOW_S}
allowed_lateness_s = 0.5

[lifecycle]
grace_s = 6               # a short health watch after a swap, for the demo
min_windows = 4
# pump-2 wears on purpose and a few windows make PSI noisy: only a gross output shift fails here.
output_psi_alert = 50

[drift]
window_s = 30             # a drift summary every 30 s (300 s in production)
min_count = 100           # levels need this many windows: 30 s windows only show the scores

[heartbeat]
interval_s = 3

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


def _drift_line(drift: DriftSummaryPayload) -> str:
    """A drift summary as one line: PSI and level of each feature, worst first."""
    parts = sorted(
        ((scores.get("psi", 0.0), name) for name, scores in drift.scores.items()
         if name in drift.features),
        reverse=True,
    )  # fmt: skip
    shown = ", ".join(
        f"{name} PSI {psi:.2f}{' ' + drift.levels[name] if name in drift.levels else ''}"
        for psi, name in parts
    )
    return f"  drift ({drift.model}@{drift.model_version}): {shown}"


def _show(topic: str, payload: bytes, topics: DeviceTopics, started: float) -> int:
    """Print one message the agent published; 1 if it was a result."""
    try:
        if topic == topics.status:
            _say(f"  status: {decode(StatusPayload, payload).state}")
            return 0
        if topic == topics.heartbeat:
            _say(_health_line(decode(HeartbeatPayload, payload)))
            return 0
        if topic == topics.drift:
            _say(_drift_line(decode(DriftSummaryPayload, payload)))
            return 0
        if topic == topics.ack:
            ack = decode(AckPayload, payload)
            outcome = "ok" if ack.ok else f"REFUSED: {ack.reason}"
            _say(f"  rollout: {ack.model}@{ack.version} {ack.step} {outcome}")
            return 0
        result = decode(ResultPayload, payload)
    except PayloadError as err:
        _say(f"  (skipped a message on {topic}: {err})")
        return 0
    worn = float(result.outputs.get("probabilities_worn", math.nan))
    bar = "#" * round(worn * 20)
    _say(
        f"{time.monotonic() - started:6.1f}  {result.asset:<8} {worn:8.3f}  "
        f"{result.outputs.get('label')!s:<8} {result.model}@{result.model_version:<4} "
        f"{result.latency_ms:5.2f} ms  {bar}"
    )
    return 1


async def _live(
    port: int, stop: asyncio.Event, serving: asyncio.Event, duration: float | None
) -> int:
    """Print the agent's results, status and health until ``stop``, or for ``duration`` seconds
    from the agent's first result (a loaded machine may take a while to start it)."""
    settings = MqttSettings(host="127.0.0.1", port=port, client_id=f"demo-{uuid.uuid4().hex[:6]}")
    client = MqttClient(settings, name="demo")
    topics = DeviceTopics(PREFIX, SITE, DEVICE)
    client.add_subscription(fleet_filter(PREFIX, "results", site=SITE), 1)
    client.add_subscription(topics.status, 1)
    client.add_subscription(topics.heartbeat, 1)
    client.add_subscription(topics.drift, 1)
    client.add_subscription(topics.ack, 1)
    await client.start()
    await client.wait_subscribed(10)
    waiting_since = time.monotonic()
    first_result: float | None = None
    results = 0

    _say(f"\n{'time':>6}  {'asset':<8} {'P(worn)':>8}  {'label':<8} {'model':<18} latency")
    try:
        while not stop.is_set():
            now = time.monotonic()
            if first_result is None and now - waiting_since > STARTUP_TIMEOUT_S:
                _say(f"  no result from the agent in {STARTUP_TIMEOUT_S:.0f} s: see agent.log")
                break
            if duration is not None and first_result is not None and now - first_result > duration:
                break
            try:
                batch = await asyncio.wait_for(client.messages(), 0.5)
            except TimeoutError:
                continue
            for message in batch:
                shown = _show(message.topic, message.payload, topics, waiting_since)
                if shown and first_result is None:
                    first_result = time.monotonic()
                    serving.set()
                results += shown
    finally:
        await client.stop()
    return results


class _Demo:
    """The demo's moving parts in one place: the programs it runs, and their clean stop."""

    def __init__(self, workdir: Path, broker_port: int, duration: float | None) -> None:
        self.workdir = workdir
        self.broker_port = broker_port
        self.duration = duration
        self.plant = PumpPlant(free_port(), PUMPS, interval_s=SAMPLE_S)
        self.metrics_port = free_port()
        self.fleet_args = [
            "--broker", f"127.0.0.1:{broker_port}", "--prefix", PREFIX,
            "--registry", str(workdir / "fleet.db"), "--store", str(workdir / "fleet-bundles"),
        ]  # fmt: skip
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, module: str, *args: str) -> None:
        """Run a program in the background, its output in ``<workdir>/<name>.log``."""
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.processes[name] = await asyncio.create_subprocess_exec(
                *_program(module, *args), stdout=log, stderr=log
            )

    async def stop(self, name: str) -> int | None:
        process = self.processes.get(name)
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
        return process.returncode

    async def fleet(self, *args: str) -> int:
        """A ``fleet`` command in the foreground, its output on the terminal."""
        command = await asyncio.create_subprocess_exec(*_program("fleet", *self.fleet_args, *args))
        return await command.wait()

    async def run(self, bundles: list[Path], public_key: Path) -> tuple[int, int | None]:
        """Everything after the bundles; (results seen, the agent's exit code)."""
        stop = asyncio.Event()
        serving = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        plant = self.plant
        config = _agent_config(self.workdir, self.broker_port, bundles[0], self.metrics_port, plant)
        try:
            _say("[3/6] fleet manager: pump-health 1 published to its registry, `fleet serve`")
            await self.fleet("models", "publish", str(bundles[0]), "--public-key", str(public_key))
            await self.start("fleet", "fleet", *self.fleet_args, "serve")
            await plant.start()
            _say(f"[4/6] plant: pump-1 and pump-2 on OPC-UA at {plant.url}")
            _say("      pump-2 runs well for 30 s, then its bearing wears out over a minute")
            _say("[5/6] edge-agent: OPC-UA sources, 2 s windows, the signed model, drift")
            await self.start("agent", "edge_agent", "run", "--config", str(config))
            _say(f"      metrics: http://127.0.0.1:{self.metrics_port}/metrics (Prometheus)")
            _say(f"[6/6] live predictions (logs in {self.workdir}); Ctrl-C stops")
            async with asyncio.TaskGroup() as group:
                pumps = group.create_task(plant.run(stop), name="demo-plant")
                rollout = group.create_task(
                    self._roll_out(bundles[1], public_key, serving, stop), name="demo-rollout"
                )
                results = await _live(self.broker_port, stop, serving, self.duration)
                stop.set()
                await pumps
                rollout.cancel()
            _say("\nthe fleet's registry, as `fleet serve` recorded the device:")
            await self.fleet("devices", "list")
            await self.fleet("drift", "report", "--model", "pump-health")
        finally:
            # The agent stops (and drains) before its PLC and its manager go.
            code = await self.stop("agent")
            await self.stop("fleet")
            await plant.stop()
        return results, code

    async def _roll_out(
        self, bundle: Path, public_key: Path, serving: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Once the agent has served a while, publish version 2 and roll it out."""
        await serving.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ROLLOUT_AFTER_S)
            return
        _say("  rollout: publishing pump-health 2 and rolling it out to line-1 (canary 1)")
        await self.fleet("models", "publish", str(bundle), "--public-key", str(public_key))
        # The drift gate compares versions; here the pump itself changes, so it is left out.
        await self.fleet(
            "rollout", "start", "pump-health@2", "--to", "line=line-1", "--canary", "1",
            "--drift-margin", "-1",
        )  # fmt: skip


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
        _say(f"[1/6] broker: mosquitto on 127.0.0.1:{broker.port}")

        _say("[2/6] training pump-health 1 on 2 s windows, bundled and signed (and 2, for later)")
        keys = workdir / "fleet"
        subprocess.run(_program("converters", "keygen", "-o", str(keys), "--force"), check=True)
        bundles = [_bundle(workdir, version, Path(f"{keys}.key")) for version in (1, 2)]
        demo = _Demo(workdir, broker.port, duration)
        results, code = asyncio.run(demo.run(bundles, Path(f"{keys}.pub")))
        _say(f"\nstopped cleanly: {results} results received; agent exit code {code}")
        return 0 if results > 0 and code == 0 else 1
