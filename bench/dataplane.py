"""The agent's data plane end to end on loopback: MQTT reading in, result out, one model.

Measured against a bare loop run the same way in the same run: a paho subscriber that decodes
each reading, calls onnxruntime and publishes the score at QoS 1 (no windows, no outbox). Both
run as their own process on one mosquitto; inputs are QoS 1, results QoS 1.

Figures: sustained readings per second (a burst, first publish to last result), latency from a
sensor's publish to the result at a subscriber at a steady 1,000 readings/s (p50, p99), and the
agent's peak resident memory with one model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import Figure

FEATURES = ["temperature", "vibration", "pressure"]
WEIGHTS = [0.5, 3.0, -1.0]
RATE = 1000.0  # readings per second for the latency figure


def model_bytes() -> bytes:
    """A small ONNX MLP: 3 features -> 32 -> 1, as a stand-in for a plant's health model."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(3, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["score"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("W1", TensorProto.FLOAT, [3, 32], w1.flatten().tolist()),
            helper.make_tensor("W2", TensorProto.FLOAT, [32, 1], w2.flatten().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


# --------------------------------------------------------------------------- the bare loop


def bare_loop(port: int, in_filter: str, out_prefix: str, model_path: str) -> None:
    """A paho subscriber calling onnxruntime and publishing: the baseline (runs as a process)."""
    import onnxruntime as ort
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        reading = json.loads(msg.payload)
        row = np.asarray([[reading[name] for name in FEATURES]], dtype=np.float32)
        score = float(session.run(None, {"X": row})[0][0, 0])
        asset = msg.topic.split("/")[-2]
        result = {"window_end": reading["ts"], "outputs": {"score": score}}
        client.publish(f"{out_prefix}/{asset}", json.dumps(result), qos=1)

    def on_connect(client: paho.Client, *args: object) -> None:
        client.subscribe(in_filter, 1)

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare-loop")
    client.on_message = on_message
    client.on_connect = on_connect
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    print("ready", flush=True)
    client.loop_forever()


# ------------------------------------------------------------------------------ the driver


class Collector:
    """Subscribes to results; records when each arrived and the reading time it answers."""

    def __init__(self, port: int, topic_filter: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.latencies: list[float] = []
        self.count = 0
        self.last_arrival = 0.0
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, 1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        now = time.time()
        payload = json.loads(msg.payload)  # type: ignore[attr-defined]
        if "window_end" not in payload:
            return  # heartbeats and status share the prefix
        with self._lock:
            self.count += 1
            self.last_arrival = now
            self.latencies.append(now - float(payload["window_end"]))

    def reset(self) -> None:
        with self._lock:
            self.latencies.clear()
            self.count = 0

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.count >= count:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rng = np.random.default_rng(1)

    def reading(self) -> bytes:
        values = self.rng.normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0])
        body = {name: round(float(v), 4) for name, v in zip(FEATURES, values, strict=True)}
        body["ts"] = time.time()
        return json.dumps(body).encode()

    def burst(self, topic: str, count: int) -> float:
        started = time.time()
        for _ in range(count):
            self.client.publish(topic, self.reading(), qos=1)
        return started

    def paced(self, topic: str, count: int, rate: float) -> None:
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.client.publish(topic, self.reading(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(port: int, prefix: str, results: str, burst: int, paced: int) -> dict[str, float]:
    """Throughput and latency of whatever serves ``prefix``-in -> ``results``/<asset>."""
    collector = Collector(port, f"{results}/#")
    publisher = Publisher(port)
    topic = f"{prefix}-in/line/bench/reading"
    try:
        # Warm up: the first messages pay for connections and lazy initialisation.
        publisher.burst(topic, 200)
        if not collector.wait_for(200, 60):
            raise RuntimeError(f"no results on {results} during warm-up")
        collector.reset()
        started = publisher.burst(topic, burst)
        if not collector.wait_for(burst, 120):
            raise RuntimeError(f"only {collector.count} of {burst} results arrived")
        throughput = burst / (collector.last_arrival - started)
        collector.reset()
        publisher.paced(topic, paced, RATE)
        if not collector.wait_for(paced, 60):
            raise RuntimeError(f"only {collector.count} of {paced} paced results arrived")
        p50, p99 = np.percentile(np.asarray(collector.latencies) * 1000, [50, 99])
    finally:
        publisher.close()
        collector.close()
    return {"throughput": throughput, "p50": float(p50), "p99": float(p99)}


def wait_ready(process: subprocess.Popen[str], word: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited: {log.read_text() if log else ''}")
        text = log.read_text() if log is not None and log.exists() else ""
        if word in text:
            return
        time.sleep(0.05)
    raise RuntimeError(f"not ready: {word}")


def run(quick: bool) -> list[Figure]:
    from edge_agent.contracts.bundle import write_bundle
    from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec
    from fleet.broker import MosquittoProcess, find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("the dataplane benchmark needs mosquitto (apt-get install mosquitto)")
    burst, paced = (2000, 2000) if quick else (10000, 5000)
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "mosquitto", binary=binary)
        broker.start()
        try:
            model = model_bytes()
            (work / "model.onnx").write_bytes(model)
            manifest = ModelManifest(
                name="bench-mlp",
                version="1",
                created="2026-01-01T00:00:00+00:00",
                source_framework="onnx",
                converter_version="bench",
                formats=["onnx"],
                inputs=[FeatureSpec(name=f) for f in FEATURES],
                outputs=[OutputSpec(name="score", kind="regression")],
                files={"model.onnx": ""},
            )
            write_bundle(work / "mlp.bundle", manifest, {"model.onnx": model})

            bare_log = work / "bare.log"
            with bare_log.open("w") as log:
                bare = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.dataplane",
                        str(broker.port),
                        "bare-in/line/+/reading",
                        "bare/results",
                        str(work / "model.onnx"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            try:
                wait_ready(bare, "ready", bare_log)
                baseline = measure(broker.port, "bare", "bare/results", burst, paced)
                bare_rss = peak_rss_mb(bare.pid)
            finally:
                bare.terminate()
                bare.wait(10)

            config = work / "agent.toml"
            config.write_text(
                f"""
topic_prefix = "agent"
[device]
id = "bench"
site = "lab"
state_dir = "{work / "state"}"
[broker]
port = {broker.port}
[model]
bundle = "{work / "mlp.bundle"}"
[[sources]]
type = "mqtt"
name = "sensors"
topics = ["agent-in/line/+/reading"]
qos = 1
asset_level = 2
[heartbeat]
interval_s = 3600
"""
            )
            agent_log = work / "agent.log"
            with agent_log.open("w") as log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            try:
                wait_ready(agent, "serving", agent_log)
                measured = measure(broker.port, "agent", "agent/lab/bench/results", burst, paced)
                agent_rss = peak_rss_mb(agent.pid)
            finally:
                agent.terminate()
                agent.wait(30)
        finally:
            broker.stop()

    name = "dataplane"
    return [
        Figure(
            name,
            "readings/s, MQTT in -> result out",
            measured["throughput"],
            "readings/s",
            "bare paho + onnxruntime loop",
            baseline["throughput"],
            better="higher",
            target=">= 0.8 x baseline",
            met=measured["throughput"] >= 0.8 * baseline["throughput"],
        ),
        Figure(
            name,
            f"latency p50 at {RATE:.0f}/s",
            measured["p50"],
            "ms",
            "bare loop p50",
            baseline["p50"],
        ),
        Figure(
            name,
            f"latency p99 at {RATE:.0f}/s",
            measured["p99"],
            "ms",
            "bare loop p99",
            baseline["p99"],
            target="<= 10 ms",
            met=measured["p99"] <= 10.0,
        ),
        Figure(
            name,
            "agent peak RSS, one model",
            agent_rss,
            "MB",
            "bare loop peak RSS",
            bare_rss,
            target="<= 150 MB",
            met=agent_rss <= 150.0,
        ),
    ]


if __name__ == "__main__":
    bare_loop(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
