"""The converter's Python API: ``convert(model, reference, ...)`` writes a bundle."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent import __version__
from edge_agent.contracts.bundle import load_private_key, write_bundle
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec, ParityReport

__all__ = ["ConversionError", "convert", "read_reference"]

OPSET = 17
PROBABILITY_TOLERANCE = 1e-4


class ConversionError(Exception):
    """The model or its reference data cannot be converted; the message says what was expected."""


def read_reference(path: Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Reference rows from a CSV file whose header names the features."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"cannot read reference data {path}: {err}") from err
    if len(rows) < 2:
        raise ConversionError(f"{path}: expected a header naming the features and at least one row")
    header, body = rows[0], rows[1:]
    try:
        data = np.asarray([[float(cell) for cell in row] for row in body], dtype=np.float32)
    except ValueError as err:
        raise ConversionError(f"{path}: every reference value must be a number ({err})") from err
    if data.shape[1] != len(header):
        raise ConversionError(f"{path}: rows have {data.shape[1]} values for {len(header)} names")
    return header, data


def _load_model(path: Path) -> Any:
    import joblib

    try:
        return joblib.load(path)
    except Exception as err:  # unpickling can raise anything
        raise ConversionError(f"cannot load a model from {path}: {err}") from err


def convert(
    model_path: Path,
    reference_path: Path,
    *,
    name: str,
    version: str,
    output: Path,
    sign_key: Path | None = None,
) -> ModelManifest:
    """Convert a fitted scikit-learn estimator or pipeline to ONNX and write a bundle."""
    import onnxruntime as ort
    import skl2onnx
    import sklearn

    model = _load_model(model_path)
    features, rows = read_reference(reference_path)
    expected = getattr(model, "n_features_in_", len(features))
    if expected != len(features):
        raise ConversionError(
            f"the model wants {expected} features but {reference_path} has {len(features)}"
        )
    onnx_model = skl2onnx.to_onnx(model, rows[:1], options={"zipmap": False}, target_opset=OPSET)
    onnx_bytes = onnx_model.SerializeToString()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    converted = session.run(None, {session.get_inputs()[0].name: rows})

    classes = getattr(model, "classes_", None)
    if classes is not None:
        labels = [str(label) for label in classes]
        outputs = [
            OutputSpec(name="label", kind="label", labels=labels),
            OutputSpec(name="probabilities", kind="probabilities", labels=labels),
        ]
        expected_proba = model.predict_proba(rows)
        max_abs = float(np.max(np.abs(expected_proba - converted[1])))
        agreement = float(np.mean(model.predict(rows) == converted[0]))
        disagreeing = np.flatnonzero(model.predict(rows) != converted[0]).tolist()
        parity = ParityReport(
            passed=max_abs <= PROBABILITY_TOLERANCE and agreement == 1.0,
            rows=len(rows),
            policy=f"probabilities within {PROBABILITY_TOLERANCE} absolute; labels all agree",
            max_abs_error={"probabilities": max_abs},
            label_agreement=agreement,
            disagreeing_rows=disagreeing[:100],
        )
    else:
        outputs = [OutputSpec(name="prediction", kind="regression")]
        expected_values = np.asarray(model.predict(rows), dtype=np.float64).reshape(len(rows), -1)
        max_abs = float(np.max(np.abs(expected_values - converted[0].reshape(len(rows), -1))))
        parity = ParityReport(
            passed=max_abs
            <= PROBABILITY_TOLERANCE * max(1.0, float(np.max(np.abs(expected_values)))),
            rows=len(rows),
            policy=f"predictions within {PROBABILITY_TOLERANCE} relative to their scale",
            max_abs_error={"prediction": max_abs},
        )
    if not parity.passed:
        raise ConversionError(f"parity check failed: {parity.model_dump_json()}")

    manifest = ModelManifest(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_framework="scikit-learn",
        framework_versions={"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__},
        converter_version=__version__,
        opset=OPSET,
        formats=["onnx"],
        inputs=[FeatureSpec(name=feature) for feature in features],
        outputs=outputs,
        files={"model.onnx": ""},
        parity=parity,
    )
    key = load_private_key(sign_key) if sign_key is not None else None
    return write_bundle(output, manifest, {"model.onnx": onnx_bytes}, key)
