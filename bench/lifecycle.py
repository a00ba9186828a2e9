"""Model hot-swaps: resident memory growth over 100 consecutive swaps, and the time one takes.

Each swap is what the agent does on ``activate``: verify the bundle (hashes, signature), load an
onnxruntime session, warm it up, re-run the golden vectors, make it the serving model and let the
previous one go. The model is a small MLP (three dense layers of 256), so a session's buffers are
big enough for a leak to show. Memory is the process's current resident set (``/proc``), read
after a garbage collection; the baseline is the resident set after ten warm-up swaps, so
allocator and import costs are not counted as growth.
"""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.common import Figure, time_per_call
from edge_agent.contracts.bundle import generate_keypair, load_private_key, write_bundle
from edge_agent.contracts.golden import GoldenVectors
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec
from edge_agent.lifecycle import activation
from edge_agent.lifecycle.activation import ActivationSettings
from edge_agent.model import LoadedModel

WIDTH = 16
HIDDEN = 256
SWAPS = 100
LIMIT_MB = 10.0


def _mlp(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    sizes = [WIDTH, HIDDEN, HIDDEN, HIDDEN, 1]
    nodes, inits, last = [], [], "X"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.normal(0, 1 / np.sqrt(a), (a, b))).astype(np.float32)
        inits.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, [a, b], w.ravel().tolist()))
        nodes.append(helper.make_node("MatMul", [last, f"W{i}"], [f"h{i}"]))
        last = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["score"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _bundle(directory: Path, version: int) -> Path:
    key = load_private_key(directory / "fleet.key")
    model = _mlp(version)
    features = [f"f{i}" for i in range(WIDTH)]
    rows = np.random.default_rng(0).normal(size=(16, WIDTH)).astype(np.float32)
    expected = ort.InferenceSession(model).run(None, {"X": rows})[0].reshape(-1)
    golden = GoldenVectors(rows, features, {"score": expected.astype(np.float64)}, {"score": 1e-4})
    manifest = ModelManifest(
        name="mlp",
        version=str(version),
        created=dt.datetime.now(dt.UTC).isoformat(),
        source_framework="onnx",
        converter_version="bench",
        formats=["onnx"],
        inputs=[FeatureSpec(name=f) for f in features],
        outputs=[OutputSpec(name="score", kind="regression")],
        files={"model.onnx": ""},
    )
    path = directory / f"mlp-{version}.bundle"
    write_bundle(path, manifest, {"model.onnx": model, "golden.npz": golden.to_bytes()}, key)
    return path


def _rss_mb() -> float:
    """Current resident set of this process, in MB (not the peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def _activate(path: Path, settings: ActivationSettings) -> LoadedModel:
    bundle = activation.verify(path, settings)
    activation.check_features(bundle, settings)
    model = activation.load(bundle, settings)
    activation.warm(model)
    activation.run_golden(model)
    return model


def run(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        private_pem, public_pem = generate_keypair()
        (directory / "fleet.pub").write_bytes(public_pem)
        (directory / "fleet.key").write_bytes(private_pem)
        settings = ActivationSettings(public_key=directory / "fleet.pub", features=None)
        bundles = [_bundle(directory, v) for v in (1, 2)]
        rows = np.random.default_rng(1).normal(size=(1, WIDTH)).astype(np.float32)

        serving = _activate(bundles[0], settings)
        for i in range(10):  # warm-up swaps: imports, allocator arenas, caches
            serving = _activate(bundles[(i + 1) % 2], settings)
            serving.predict(rows)
        gc.collect()
        before = _rss_mb()
        started = time.perf_counter()
        for i in range(SWAPS):
            candidate = _activate(bundles[i % 2], settings)
            serving = candidate  # the swap; the previous model is released here
            serving.predict(rows)
        per_swap = (time.perf_counter() - started) / SWAPS
        gc.collect()
        after = _rss_mb()
        predict = time_per_call(lambda: serving.predict(rows), min_time=0.2 if quick else 0.5)
    growth = after - before
    return [
        Figure(
            bench="lifecycle",
            name=f"resident memory after {SWAPS} swaps",
            value=after,
            unit="MB",
            baseline_name="before them",
            baseline=before,
            target=f"growth < {LIMIT_MB:g} MB (measured {growth:+.1f} MB)",
            met=growth < LIMIT_MB,
        ),
        Figure(
            bench="lifecycle",
            name="one swap (verify, load, warm up, golden)",
            value=per_swap * 1000,
            unit="ms",
            baseline_name="one inference",
            baseline=predict * 1000,
        ),
    ]
