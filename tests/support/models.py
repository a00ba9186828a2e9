"""Tiny real models and bundles, built inside the tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from edge_agent.contracts.bundle import write_bundle
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec

FEATURES = ["temperature", "vibration", "pressure"]


def linear_onnx(weights: npt.ArrayLike, bias: float = 0.0, opset: int = 17) -> bytes:
    """ONNX model ``score = X @ weights + bias`` with input X (batch, n) and output score (batch, 1)."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["score"]),
        ],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [bias]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def linear_bundle(
    path: Path,
    *,
    weights: npt.ArrayLike = (1.0, 10.0, 100.0),
    bias: float = 0.5,
    features: list[str] | None = None,
    name: str = "linear",
    version: str = "1",
) -> Path:
    """A bundle holding :func:`linear_onnx`, its output reported as the regression ``score``."""
    features = features or FEATURES
    manifest = ModelManifest(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_framework="onnx",
        converter_version="test",
        opset=17,
        formats=["onnx"],
        inputs=[FeatureSpec(name=f) for f in features],
        outputs=[OutputSpec(name="score", kind="regression")],
        files={"model.onnx": ""},
    )
    write_bundle(path, manifest, {"model.onnx": linear_onnx(weights, bias)})
    return path


def train_pipeline(directory: Path, rows: int = 300, seed: int = 0) -> tuple[Path, Path]:
    """A fitted scaler + logistic regression over FEATURES, saved with joblib, and a reference CSV."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    x = rng.normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0], size=(rows, 3))
    y = ((x[:, 0] - 70) / 5 + (x[:, 1] - 0.3) / 0.1 > 0.5).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    model_path = directory / "model.joblib"
    joblib.dump(pipeline, model_path)
    reference = directory / "reference.csv"
    np.savetxt(reference, x, delimiter=",", header=",".join(FEATURES), comments="", fmt="%.6f")
    return model_path, reference
