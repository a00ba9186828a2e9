"""PyTorch networks: state dict with its class, TorchScript, a pickled module; ONNX and TFLite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from converters import ConversionError, convert
from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with, fresh_rows, write_csv
from tests.support.processes import run
from tests.support.tools import require_module

if TYPE_CHECKING:
    from torch.nn import Module

torch = require_module("torch", "convert-torch")

pytestmark = pytest.mark.torch
LABELS = ["setosa", "versicolor", "virginica"]
NETWORK = "tests.converters.networks:PumpMLP"


@pytest.fixture(scope="module")
def mlp(iris: Dataset) -> Module:
    from tests.converters.networks import PumpMLP, train

    torch.manual_seed(0)
    model = PumpMLP()
    train(model, torch.from_numpy(iris.x), torch.from_numpy(iris.y))
    return model


@pytest.fixture(scope="module")
def windows() -> Dataset:
    """Vibration windows of 16 samples, the target their energy."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, size=(200, 16)).astype(np.float32)
    return Dataset(x, (x**2).sum(axis=1).astype(np.float32), [f"s{i:02d}" for i in range(16)])


def _torch_out(model: Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = model(torch.from_numpy(rows)).numpy()
    return result


def _check_classifier(bundle: Path, model: Module, data: Dataset, runner: str) -> None:
    served = load_model(bundle, runner=runner)
    assert served.runner.format == runner
    rows = np.vstack([data.x, fresh_rows(data)])
    expected = _torch_out(model, rows)
    results = served.predict(rows)
    assert [r["label"] for r in results] == expected.argmax(axis=1).tolist()
    got = np.array([[r[f"probabilities_{label}"] for label in LABELS] for r in results])
    assert np.abs(got - expected).max() <= 1e-4


def test_state_dict_with_its_class_to_onnx(tmp_path: Path, iris: Dataset, mlp: Module) -> None:
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    bundle, manifest = convert_with(
        tmp_path, tmp_path / "mlp.pt", iris, model_class=NETWORK, labels=LABELS
    )
    assert manifest.source_framework == "pytorch" and "torch" in manifest.framework_versions
    assert [(o.name, o.kind, o.labels) for o in manifest.outputs] == [
        ("label", "label", LABELS),
        ("probabilities", "probabilities", LABELS),
    ]
    assert manifest.parity is not None and manifest.parity.passed
    _check_classifier(bundle, mlp, iris, "onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_through_the_cli(tmp_path: Path, iris: Dataset, mlp: Module) -> None:
    torch.jit.save(torch.jit.script(mlp), tmp_path / "mlp.ts")
    result = run(
        "edge-convert",
        "convert",
        str(tmp_path / "mlp.ts"),
        "--reference",
        str(iris.csv(tmp_path / "reference.csv")),
        "-o",
        str(tmp_path / "pump.bundle"),
        "--name",
        "pump",
        "--version",
        "2",
        "--labels",
        ",".join(LABELS),
        "--quantize",
        "dynamic-int8",
    )
    assert result.returncode == 0, result.stderr
    assert "quantization onnx dynamic-int8" in result.stdout
    served = load_model(tmp_path / "pump.bundle")
    (report,) = served.manifest.quantization_reports
    assert report.label_agreement is not None and report.label_agreement >= 0.9
    labels = [r["label"] for r in served.predict(iris.x)]
    agreement = np.mean(np.array(labels) == _torch_out(mlp, iris.x).argmax(axis=1))
    assert agreement >= 0.9


def test_state_dict_needs_its_class(tmp_path: Path, iris: Dataset, mlp: Module) -> None:
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ConversionError, match="is a state dict: give --model-class"):
        convert_with(tmp_path, tmp_path / "mlp.pt", iris)
    with pytest.raises(ConversionError, match=r"does not fit tests\.converters\.networks:PumpMLP"):
        convert_with(
            tmp_path, tmp_path / "mlp.pt", iris, model_class=NETWORK, model_kwargs={"hidden": 8}
        )


def test_wrong_feature_count(tmp_path: Path, mlp: Module) -> None:
    torch.save(mlp, tmp_path / "mlp.pt")
    reference = write_csv(tmp_path / "r.csv", np.ones((5, 6)), [f"f{i}" for i in range(6)])
    with pytest.raises(ConversionError, match=r"the model wants 4 features but .* has 6"):
        convert(tmp_path / "mlp.pt", reference, name="p", version="1", output=tmp_path / "p.bundle")


@pytest.mark.tensorflow
def test_mlp_to_both_targets(tmp_path: Path, iris: Dataset, mlp: Module) -> None:
    torch.save(mlp, tmp_path / "mlp.pt")
    bundle, manifest = convert_with(
        tmp_path, tmp_path / "mlp.pt", iris, target="both", labels=LABELS
    )
    assert manifest.formats == ["onnx", "tflite"]
    assert set(manifest.parity_by_format) == {"onnx", "tflite"}
    assert all(report.passed for report in manifest.parity_by_format.values())
    _check_classifier(bundle, mlp, iris, "tflite")
    _check_classifier(bundle, mlp, iris, "onnx")


@pytest.mark.tensorflow
def test_cnn_to_onnx_and_tflite_quantized(tmp_path: Path, windows: Dataset) -> None:
    from tests.converters.networks import VibrationCNN, train

    torch.manual_seed(0)
    model = VibrationCNN()
    train(model, torch.from_numpy(windows.x), torch.from_numpy(windows.y), epochs=20)
    torch.save(model, tmp_path / "cnn.pt")
    bundle, float_manifest = convert_with(tmp_path, tmp_path / "cnn.pt", windows, target="both")
    assert float_manifest.formats == ["onnx", "tflite"]
    rows = fresh_rows(windows)
    expected = _torch_out(model, rows)[:, 0]
    for runner in ("onnx", "tflite"):
        parity = float_manifest.parity_by_format[runner]
        assert parity.passed and parity.max_abs_error["prediction"] < 1e-3, runner
        served = load_model(bundle, runner=runner)
        assert served.runner.format == runner
        got = np.array([r["prediction"] for r in served.predict(rows)])
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))

    quantized, manifest = convert_with(
        tmp_path, tmp_path / "cnn.pt", windows, "q", target="tflite", quantize="static-int8"
    )
    (report,) = manifest.quantization_reports
    assert report.format == "tflite" and report.method == "static-int8"
    scale = float(np.abs(windows.y).max())
    assert 0 < report.max_abs_change["prediction"] < 0.2 * scale
    assert load_model(quantized).runner.format == "tflite"
