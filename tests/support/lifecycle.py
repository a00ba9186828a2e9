"""Model lifecycle helpers for tests: complete bundles, a fleet side that sends them, ack waits."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper

from converters.baseline import build_baseline
from edge_agent.contracts.bundle import load_private_key, sha256_hex, write_bundle
from edge_agent.contracts.golden import GoldenVectors
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec
from edge_agent.contracts.payloads import (
    AckPayload,
    ActivateCommand,
    DesiredStateCommand,
    OfferCommand,
    RollbackCommand,
    TransferChunkPayload,
    decode,
)
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_onnx
from tests.support.mqtt import Probe

# Live and reference rows: temperature ~70, vibration ~0.3, pressure ~5.
CENTER = np.array([70.0, 0.3, 5.0])
SPREAD = np.array([5.0, 0.1, 1.0])


def reference_rows(count: int = 500, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.normal(CENTER, SPREAD, size=(count, 3)).astype(np.float32)


def fragile_onnx(weights: npt.ArrayLike, bias: float, limit: float) -> bytes:
    """Like ``linear_onnx``, but inference fails when any input in the batch exceeds ``limit``.

    The batch is reshaped to a width of a large prime when the limit is crossed, which no batch
    of three-feature rows fills: onnxruntime raises, as a model with a latent bug would.
    """
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    width = w.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["X"], ["top"], keepdims=0),
            helper.make_node("Greater", ["top", "LIMIT"], ["over"]),
            helper.make_node("Where", ["over", "BAD", "GOOD"], ["cols"]),
            helper.make_node("Concat", ["MINUS1", "cols"], ["shape"], axis=0),
            helper.make_node("Reshape", ["X", "shape"], ["Xr"]),
            helper.make_node("MatMul", ["Xr", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["score"]),
        ],
        "fragile",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [bias]),
            helper.make_tensor("LIMIT", TensorProto.FLOAT, [], [limit]),
            helper.make_tensor("BAD", TensorProto.INT64, [1], [1_000_003]),
            helper.make_tensor("GOOD", TensorProto.INT64, [1], [width]),
            helper.make_tensor("MINUS1", TensorProto.INT64, [1], [-1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


def complete_bundle(
    path: Path,
    *,
    version: str,
    weights: tuple[float, ...] = (1.0, 10.0, 100.0),
    bias: float = 0.5,
    features: list[str] | None = None,
    key: Path | None = None,
    model_bytes: bytes | None = None,
    golden_offset: float = 0.0,
    baseline_bias: float | None = None,
    name: str = "linear",
) -> Path:
    """A bundle like the converter writes: model, manifest, baseline, golden vectors, signature.

    ``golden_offset`` shifts the expected golden outputs (golden vectors that fail);
    ``baseline_bias`` computes the output baseline for another bias (a model that answers out of
    its own distribution).
    """
    features = features or FEATURES
    rows = reference_rows()
    w = np.asarray(weights, dtype=np.float64)
    scores = rows.astype(np.float64) @ w + bias
    baseline_scores = scores if baseline_bias is None else scores - bias + baseline_bias
    specs = [FeatureSpec(name=f) for f in features]
    baseline = build_baseline(specs, rows, {"score": baseline_scores})
    golden_rows = rows[:16]
    golden = GoldenVectors(
        inputs=golden_rows,
        feature_names=features,
        expected={"score": (golden_rows.astype(np.float64) @ w + bias + golden_offset)},
        tolerance={"score": 1e-3},
    )
    manifest = ModelManifest(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_framework="onnx",
        converter_version="test",
        opset=17,
        formats=["onnx"],
        inputs=specs,
        outputs=[OutputSpec(name="score", kind="regression")],
        files={"model.onnx": ""},
    )
    files = {
        "model.onnx": model_bytes if model_bytes is not None else linear_onnx(weights, bias),
        "baseline.json": baseline.model_dump_json().encode(),
        "golden.npz": golden.to_bytes(),
    }
    write_bundle(path, manifest, files, load_private_key(key) if key is not None else None)
    return path


def tamper(path: Path, out: Path) -> Path:
    """A copy of a bundle whose model file was changed after signing (the manifest was not)."""
    with zipfile.ZipFile(path) as source:
        contents = {name: source.read(name) for name in source.namelist()}
    contents["model.onnx"] = contents["model.onnx"] + b"\0"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    out.write_bytes(buffer.getvalue())
    return out


def lifecycle_config(
    path: Path,
    *,
    port: int,
    prefix: str,
    bundle: Path,
    state_dir: Path,
    public_key: Path | None = None,
    extra: str = "",
) -> Path:
    """An agent config reading ``<prefix>-in/line-2/<asset>/reading``, with a public key."""
    write_agent_config(
        path,
        port=port,
        prefix=prefix,
        bundle=bundle,
        state_dir=state_dir,
        input_topic=f"{prefix}-in/line-2/+/reading",
        extra=extra,
    )
    if public_key is not None:
        text = path.read_text()
        line = f'bundle = "{bundle}"\n'
        path.write_text(text.replace(line, line + f'public_key = "{public_key}"\n'))
    return path


@dataclass
class Fleet:
    """The fleet's side of the control protocol, driven by hand from a test's probe."""

    probe: Probe
    topics: DeviceTopics

    def acks(self) -> list[AckPayload]:
        return [decode(AckPayload, m.payload) for m in self.probe.on_topic(self.topics.ack)]

    def wait_ack(
        self,
        step: str,
        *,
        version: str | None = None,
        cmd_id: str | None = None,
        timeout: float = 30,
    ) -> AckPayload:
        """The first ack of ``step`` (for ``version`` / ``cmd_id``), waiting for it."""

        def matching() -> list[AckPayload]:
            return [
                a
                for a in self.acks()
                if a.step == step
                and (version is None or a.version == version)
                and (cmd_id is None or a.cmd_id == cmd_id)
            ]

        self.probe.wait_for(lambda _msgs: bool(matching()), timeout)
        return matching()[0]

    def command(self, payload: bytes | str, *, topic: str | None = None) -> None:
        self.probe.publish(topic or self.topics.cmd, payload)

    def offer(self, bundle: Path, *, chunk_size: int = 4096, cmd_id: str | None = None) -> str:
        """Offer a bundle; returns the offer's cmd_id."""
        data = bundle.read_bytes()
        manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
        cmd_id = cmd_id or f"offer-{uuid.uuid4().hex[:8]}"
        offer = OfferCommand(
            cmd_id=cmd_id,
            ts=time.time(),
            model=manifest["name"],
            version=manifest["version"],
            sha256=sha256_hex(data),
            size=len(data),
            chunk_size=chunk_size,
        )
        self.command(offer.to_json())
        return cmd_id

    def send_chunks(
        self, bundle: Path, *, chunk_size: int = 4096, only: list[int] | None = None
    ) -> int:
        """Publish the bundle's chunks (all, or ``only`` these); returns how many there are."""
        data = bundle.read_bytes()
        manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
        pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
        for index, piece in enumerate(pieces):
            if only is not None and index not in only:
                continue
            chunk = TransferChunkPayload(
                model=manifest["name"],
                version=manifest["version"],
                index=index,
                total=len(pieces),
                sha256=sha256_hex(piece),
                data=base64.b64encode(piece).decode(),
            )
            self.probe.publish(self.topics.transfer, chunk.to_json())
        return len(pieces)

    def transfer(self, bundle: Path, *, chunk_size: int = 4096) -> str:
        """Offer and send a whole bundle, wait until the device received it; returns the cmd_id."""
        cmd_id = self.offer(bundle, chunk_size=chunk_size)
        self.wait_ack("offer", cmd_id=cmd_id)
        self.send_chunks(bundle, chunk_size=chunk_size)
        received = self.wait_ack("received", cmd_id=cmd_id)
        assert received.ok, received.reason
        return cmd_id

    def activate(
        self, version: str, *, grace_s: float = 0.0, shadow_windows: int = 0, model: str = "linear"
    ) -> str:
        cmd_id = f"activate-{uuid.uuid4().hex[:8]}"
        command = ActivateCommand(
            cmd_id=cmd_id,
            ts=time.time(),
            model=model,
            version=version,
            grace_s=grace_s,
            shadow_windows=shadow_windows,
        )
        self.command(command.to_json())
        return cmd_id

    def rollback(self, to_version: str | None = None) -> str:
        cmd_id = f"rollback-{uuid.uuid4().hex[:8]}"
        self.command(
            RollbackCommand(cmd_id=cmd_id, ts=time.time(), to_version=to_version).to_json()
        )
        return cmd_id

    def desire(self, bundle: Path, *, grace_s: float = 0.0, cmd_id: str | None = None) -> str:
        data = bundle.read_bytes()
        manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
        cmd_id = cmd_id or f"desired-{uuid.uuid4().hex[:8]}"
        desired = DesiredStateCommand(
            cmd_id=cmd_id,
            ts=time.time(),
            model=manifest["name"],
            version=manifest["version"],
            sha256=sha256_hex(data),
            size=len(data),
            grace_s=grace_s,
        )
        self.probe.publish(self.topics.desired, desired.to_json(), retain=True)
        return cmd_id
