"""An existing ONNX network as the source: passed through to ONNX, translated to TFLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters import ConversionError, convert
from edge_agent.model import load_model
from tests.converters.conftest import write_csv
from tests.support.models import linear_onnx

WEIGHTS = (1.0, 10.0, 100.0)


def _reference(tmp_path: Path) -> Path:
    rows = np.random.default_rng(0).normal(size=(50, 3))
    return write_csv(tmp_path / "r.csv", rows, ["a", "b", "c"])


def _expected(rows: np.ndarray) -> np.ndarray:
    result: np.ndarray = rows @ np.asarray(WEIGHTS) + 0.5
    return result


def test_onnx_to_onnx(tmp_path: Path) -> None:
    (tmp_path / "linear.onnx").write_bytes(linear_onnx(WEIGHTS, 0.5))
    manifest = convert(
        tmp_path / "linear.onnx", _reference(tmp_path), name="lin", version="1",
        output=tmp_path / "lin.bundle",
    )  # fmt: skip
    assert manifest.source_framework == "onnx" and manifest.opset == 17
    served = load_model(tmp_path / "lin.bundle")
    rows = np.array([[1, 2, 3], [0, 0, 0]], dtype=np.float32)
    got = [r["prediction"] for r in served.predict(rows)]
    assert got == pytest.approx(_expected(rows).tolist(), abs=1e-4)


@pytest.mark.tensorflow
def test_onnx_to_tflite(tmp_path: Path) -> None:
    (tmp_path / "linear.onnx").write_bytes(linear_onnx(WEIGHTS, 0.5))
    convert(
        tmp_path / "linear.onnx", _reference(tmp_path), name="lin", version="1",
        output=tmp_path / "lin.bundle", target="tflite",
    )  # fmt: skip
    served = load_model(tmp_path / "lin.bundle")
    assert served.runner.format == "tflite"
    rows = np.array([[1, 2, 3], [0, 0, 0], [-1, 0.5, 2]], dtype=np.float32)
    got = [r["prediction"] for r in served.predict(rows)]
    assert got == pytest.approx(_expected(rows).tolist(), abs=1e-3)


def _graph(nodes: list[onnx.NodeProto], outputs: list[str]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", 3]) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


def test_two_outputs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.onnx"
    path.write_bytes(
        _graph(
            [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Neg", ["X"], ["n"])],
            ["r", "n"],
        )
    )
    with pytest.raises(ConversionError, match=r"returns 2 tensors \(r, n\)"):
        convert(path, _reference(tmp_path), name="x", version="1", output=tmp_path / "x.bundle")


@pytest.mark.tensorflow
def test_untranslatable_op_is_named(tmp_path: Path) -> None:
    path = tmp_path / "sin.onnx"
    path.write_bytes(_graph([helper.make_node("Sin", ["X"], ["y"])], ["y"]))
    with pytest.raises(ConversionError, match="does not translate: Sin; use --target onnx"):
        convert(
            path, _reference(tmp_path), name="x", version="1", output=tmp_path / "x.bundle",
            target="tflite",
        )  # fmt: skip
