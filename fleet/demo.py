"""``fleet demo``: the whole story on one machine, on embedded defaults.

A broker, two pumps served over OPC-UA (one whose bearing wears), a model trained on their
window features and bundled by ``edge-convert``, an ``edge-agent`` reading the pumps' tags,
building two-second windows and serving the model, and its live predictions and health in the
terminal. Ctrl-C stops it cleanly at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

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
from fleet.broker import MosquittoProcess, fetched_mosquitto_dir, find_mosquitto, free_port
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
# A program that has not stopped this long after SIGTERM is killed.
STOP_TIMEOUT_S = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FETCH_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch-mosquitto"


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


def _train(workdir: Path, version: int) -> tuple[Path, Path]:
    """Train pump-health ``version`` on window features; (the model file, its reference rows).

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
    return model_path, reference


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


class _Failed(Exception):
    """A step of the demo failed; the message says which, the demo stops and exits 1."""


async def _stop_child(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the child's process group, then SIGKILL if it lingers; waits for it."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class _Demo:
    """The demo's moving parts in one place: what it started, in order, and their stop.

    Ctrl-C (SIGINT) or SIGTERM at any moment stops the demo. During the live view it ends the
    view as ``--duration`` does (the fleet's report, then the stop); at any other moment, or a
    second time, it cancels the step under way. Either way everything started is stopped in
    reverse start order, and the exit status is 128 + the signal number. Every program runs in its
    own session, so the terminal's Ctrl-C reaches this process only: the programs do not all stop
    at once, each gets SIGTERM in its turn (the agent drains while its broker is still up).
    """

    def __init__(self, workdir: Path, binary: str, duration: float | None) -> None:
        self.workdir = workdir
        self.binary = binary
        self.duration = duration
        self.signum: int | None = None
        self.results = 0
        self.agent: asyncio.subprocess.Process | None = None
        self.fleet_args: list[str] = []
        self._task: asyncio.Task[int] | None = None
        self._live_stop: asyncio.Event | None = None
        self._stopping = False
        # What was started, stopped last-in first-out when the demo ends however it ends.
        self._started = contextlib.AsyncExitStack()

    def record(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler outside the event loop: remember the signal, ``main`` acts on it."""
        if self.signum is None:
            self.signum = signum

    def _interrupt(self, signum: int) -> None:
        """The signal handler on the event loop."""
        self.record(signum)
        if self._stopping:
            return  # the stop under way finishes by itself
        if self._live_stop is not None and not self._live_stop.is_set():
            self._live_stop.set()
        elif self._task is not None:
            self._task.cancel()

    async def main(self) -> int:
        """Run the story and stop everything it started; returns the exit code."""
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._interrupt, signum)
        try:
            if self.signum is None:  # else a signal came before the event loop took over
                await self._story()
        except asyncio.CancelledError:
            if self.signum is None:
                raise
        except _Failed as err:
            _say(f"fleet demo: {err}")
            return 1
        finally:
            self._stopping = True
            await self._started.aclose()
        if self.signum is not None:
            name = "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
            _say(f"\nstopped by {name}: everything the demo started has stopped")
            return 128 + self.signum
        code = None if self.agent is None else self.agent.returncode
        _say(f"\nstopped cleanly: {self.results} results received; agent exit code {code}")
        return 0 if self.results > 0 and code == 0 else 1

    async def _spawn(
        self, module: str, *args: str, log: str | None = None, quiet: bool = False
    ) -> asyncio.subprocess.Process:
        """Start a program in its own session, its output in ``<workdir>/<log>.log`` or on the
        terminal (only its errors if ``quiet``); it is stopped with the demo if it still runs."""
        with contextlib.ExitStack() as files:
            out: IO[bytes] | int | None = subprocess.DEVNULL if quiet else None
            err: IO[bytes] | int | None = None
            if log is not None:
                out = err = files.enter_context((self.workdir / f"{log}.log").open("ab"))
            process = await asyncio.create_subprocess_exec(
                *_program(module, *args), stdout=out, stderr=err, start_new_session=True
            )
        self._started.push_async_callback(_stop_child, process)
        return process

    async def _foreground(self, module: str, *args: str, quiet: bool = False) -> int:
        """A program in the foreground, its output on the terminal; its exit code."""
        return await (await self._spawn(module, *args, quiet=quiet)).wait()

    async def fleet(self, *args: str) -> int:
        """A ``fleet`` command in the foreground, its output on the terminal."""
        return await self._foreground("fleet", *self.fleet_args, *args)

    async def _bundle(self, version: int, sign_key: Path) -> Path:
        """Train pump-health ``version``, then convert, check and sign it with ``edge-convert``."""
        model_path, reference = _train(self.workdir, version)
        bundle = self.workdir / f"pump-health-{version}.bundle"
        code = await self._foreground(
            "converters", "convert", str(model_path), "--reference", str(reference),
            "-o", str(bundle), "--name", "pump-health", "--version", str(version),
            "--sign-key", str(sign_key), quiet=version > 1,
        )  # fmt: skip
        if code != 0:
            raise _Failed(f"edge-convert could not bundle pump-health {version} (exit {code})")
        return bundle

    async def _story(self) -> None:
        broker = MosquittoProcess(self.workdir / "broker", binary=self.binary)
        self._started.callback(broker.stop)
        try:
            broker.start()
        except RuntimeError as err:
            raise _Failed(str(err)) from err
        _say(f"[1/6] broker: mosquitto on 127.0.0.1:{broker.port}")
        self.fleet_args = [
            "--broker", f"127.0.0.1:{broker.port}", "--prefix", PREFIX,
            "--registry", str(self.workdir / "fleet.db"),
            "--store", str(self.workdir / "fleet-bundles"),
        ]  # fmt: skip

        _say("[2/6] training pump-health 1 on 2 s windows, bundled and signed (and 2, for later)")
        keys = self.workdir / "fleet"
        if await self._foreground("converters", "keygen", "-o", str(keys), "--force") != 0:
            raise _Failed("edge-convert keygen failed")
        bundles = [await self._bundle(version, Path(f"{keys}.key")) for version in (1, 2)]
        public_key = Path(f"{keys}.pub")

        _say("[3/6] fleet manager: pump-health 1 published to its registry, `fleet serve`")
        await self.fleet("models", "publish", str(bundles[0]), "--public-key", str(public_key))
        await self._spawn("fleet", *self.fleet_args, "serve", log="fleet")

        plant = PumpPlant(free_port(), PUMPS, interval_s=SAMPLE_S)
        self._started.push_async_callback(plant.stop)
        await plant.start()
        _say(f"[4/6] plant: pump-1 and pump-2 on OPC-UA at {plant.url}")
        _say("      pump-2 runs well for 30 s, then its bearing wears out over a minute")

        _say("[5/6] edge-agent: OPC-UA sources, 2 s windows, the signed model, drift")
        metrics_port = free_port()
        config = _agent_config(self.workdir, broker.port, bundles[0], metrics_port, plant)
        self.agent = await self._spawn("edge_agent", "run", "--config", str(config), log="agent")
        _say(f"      metrics: http://127.0.0.1:{metrics_port}/metrics (Prometheus)")

        _say(f"[6/6] live predictions (logs in {self.workdir}); Ctrl-C stops")
        stop = self._live_stop = asyncio.Event()
        serving = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            pumps = group.create_task(plant.run(stop), name="demo-plant")
            rollout = group.create_task(
                self._roll_out(bundles[1], public_key, serving, stop), name="demo-rollout"
            )
            self.results = await _live(broker.port, stop, serving, self.duration)
            stop.set()
            await pumps
            rollout.cancel()
        _say("\nthe fleet's registry, as `fleet serve` recorded the device:")
        await self.fleet("devices", "list")
        await self.fleet("drift", "report", "--model", "pump-health")

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


def _no_broker_message() -> str:
    chosen = os.environ.get("MOSQUITTO_BIN")
    found = (
        f"MOSQUITTO_BIN={chosen} is not an executable file"
        if chosen is not None
        else f"no mosquitto on PATH, in /usr/sbin or in {fetched_mosquitto_dir()}"
    )
    return (
        f"fleet demo: the demo needs the mosquitto broker, and {found}.\n"
        "  install it:         sudo apt-get install mosquitto  (Debian, Ubuntu, Raspberry Pi OS)\n"
        "  or, without root:   scripts/fetch-mosquitto  (unpacks it into .venv/mosquitto)\n"
        "  or name a binary:   MOSQUITTO_BIN=/path/to/mosquitto scripts/demo"
    )


def _offer_fetch() -> bool:
    """Interactive only: offer to fetch the Debian package into the venv; True if it was."""
    if "MOSQUITTO_BIN" in os.environ or not sys.stdin.isatty() or not FETCH_SCRIPT.exists():
        return False
    if shutil.which("apt-get") is None:
        return False
    try:
        answer = input(
            "The demo needs the mosquitto broker, which is not installed. Fetch the Debian "
            f"package into {fetched_mosquitto_dir()} now (no root needed)? [Y/n] "
        )
        if answer.strip().lower() not in ("", "y", "yes"):
            return False
        fetched = subprocess.run([str(FETCH_SCRIPT), str(fetched_mosquitto_dir())], check=False)
    except (EOFError, KeyboardInterrupt):
        _say("")
        return False
    return fetched.returncode == 0


def _choose_broker() -> str | None:
    """$MOSQUITTO_BIN or mosquitto on PATH, else the fetched one, else fetch it if the user says
    so; None (after saying how to get one) when there is none."""
    binary = find_mosquitto()
    if binary is None and _offer_fetch():
        binary = find_mosquitto()
    if binary is None:
        print(_no_broker_message(), file=sys.stderr, flush=True)
    return binary


def _handle_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def run_demo(workdir: Path | None = None, duration: float | None = None) -> int:
    """Run the demo; returns an exit code. ``duration`` stops it by itself after that many s."""
    binary = _choose_broker()
    if binary is None:
        return 1
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        with contextlib.ExitStack() as stack:
            if workdir is None:
                workdir = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-demo-"))
                )
            workdir.mkdir(parents=True, exist_ok=True)
            demo = _Demo(workdir, binary, duration)
            _handle_signals(demo.record)
            code = asyncio.run(demo.main())
            # Closing the event loop put back Python's own handlers; the temporary files still go.
            _handle_signals(demo.record)
    except KeyboardInterrupt:
        # Only in the instant between the loop closing and the line above: all had stopped.
        code = 128 + signal.SIGINT
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
