"""ONNX int8 quantization: what it costs is measured and reported; what cannot be quantized says so."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from converters import ConversionError
from converters.targets.onnx import QUANTIZED_OPS
from edge_agent.contracts.golden import GoldenVectors, check_golden
from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory, diabetes: Dataset) -> Path:
    model = make_pipeline(
        MinMaxScaler(), MLPRegressor(hidden_layer_sizes=(128, 64), max_iter=60, random_state=0)
    )
    with pytest.warns(ConvergenceWarning):  # fine for a size and error measurement
        model.fit(diabetes.x, diabetes.y)
    path = tmp_path_factory.mktemp("mlp") / "mlp.joblib"
    joblib.dump(model, path)
    return path


@pytest.mark.parametrize("method", ["dynamic-int8", "static-int8"])
def test_int8_onnx(tmp_path: Path, diabetes: Dataset, mlp_file: Path, method: str) -> None:
    output, manifest = convert_with(tmp_path, mlp_file, diabetes, quantize=method)
    assert manifest.quantization == method
    assert manifest.parity is not None and manifest.parity.passed  # the float model's certificate
    (report,) = manifest.quantization_reports
    assert (report.format, report.method, report.rows) == ("onnx", method, len(diabetes.x))
    assert report.quantized_bytes < report.float_bytes
    change = report.max_abs_change["prediction"]
    assert 0 < change < 0.1 * float(np.abs(diabetes.y).max())
    served = load_model(output)
    ops = {
        node.op_type for node in onnx.load_from_string(served.bundle.files["model.onnx"]).graph.node
    }
    assert ops & QUANTIZED_OPS
    assert len(served.bundle.files["model.onnx"]) == report.quantized_bytes
    # The golden tolerance allows what quantization was accepted with, and the device passes.
    golden = GoldenVectors.from_bytes(served.bundle.files["golden.npz"])
    assert golden.tolerance["prediction"] > manifest.parity.tolerance["prediction"]
    assert check_golden(golden, served.predict).passed


def test_tree_ensemble_has_nothing_to_quantize(tmp_path: Path, diabetes: Dataset) -> None:
    forest = RandomForestRegressor(n_estimators=5).fit(diabetes.x, diabetes.y)
    with pytest.raises(ConversionError, match="found nothing to quantize"):
        convert_with(tmp_path, forest, diabetes, quantize="dynamic-int8")


def test_float16_is_for_tflite(tmp_path: Path, diabetes: Dataset, mlp_file: Path) -> None:
    with pytest.raises(ConversionError, match="float16 is a TFLite quantization"):
        convert_with(tmp_path, mlp_file, diabetes, quantize="float16")
