"""The ONNX target: the pinned opsets, model checks and onnxruntime int8 quantization."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError

__all__ = [
    "ML_OPSET",
    "OPSET",
    "QUANTIZED_OPS",
    "check_single_input",
    "quantize_onnx",
]

# The default ONNX opset every export pins; onnxruntime >= 1.17 runs it on every device.
OPSET = 17
# The ai.onnx.ml opset (tree ensembles, linear classifiers, imputers, scalers).
ML_OPSET = 3
# Ops whose weights int8 quantization can store as int8.
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv"})
# Ops that only a quantized graph holds: their absence means quantization changed nothing.
QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
_CALIBRATION_BATCH = 32


def check_single_input(model: bytes, what: str) -> None:
    """Refuse a model the agent cannot feed: one float input ``(batch, features)``."""
    import onnx

    try:
        proto = onnx.load_from_string(model)
    except Exception as err:  # onnx raises DecodeError and friends
        raise ConversionError(f"{what} is not a readable ONNX model: {err}") from err
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ConversionError(
            f"{what} takes {len(inputs)} inputs ({names}); the agent feeds one (batch, features)"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise ConversionError(
            f"{what}: input {inputs[0].name} must be (batch, features) with a fixed feature count"
        )


class _Calibration:
    """Feeds the reference rows to onnxruntime's static calibration, a batch at a time."""

    def __init__(self, input_name: str, rows: npt.NDArray[np.float32]) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            {input_name: rows[start : start + _CALIBRATION_BATCH]}
            for start in range(0, len(rows), _CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the CalibrationDataReader protocol; one pass suffices
        return None


def quantize_onnx(model: bytes, method: str, rows: npt.NDArray[np.float32]) -> bytes:
    """Int8-quantize an ONNX model: ``dynamic-int8`` (weights) or ``static-int8`` (weights and
    activations, calibrated on ``rows``). Refuses when nothing in the model could be quantized."""
    import onnx

    proto = onnx.load_from_string(model)
    if not {node.op_type for node in proto.graph.node} & WEIGHTED_OPS:
        raise ConversionError(
            f"{method} found nothing to quantize in this model (tree ensembles and other models "
            "without MatMul, Gemm or Conv weights stay float); use --quantize none"
        )
    input_name = proto.graph.input[0].name
    root = logging.getLogger()
    level = root.level
    # onnxruntime.quantization logs advice on the root logger that a converter user cannot act on.
    root.setLevel(logging.ERROR)
    try:
        return _quantize(model, method, input_name, rows)
    finally:
        root.setLevel(level)


# Weights are int8 per channel with 7-bit range: x86 CPUs without VNNI saturate the 8-bit
# uint8 x int8 products (onnxruntime's documented caveat), which cost a tiny MLP 0.09 in
# probability here against 0.004 with the reduced range.
def _quantize(model: bytes, method: str, input_name: str, rows: npt.NDArray[np.float32]) -> bytes:
    import onnx
    from onnxruntime import quantization

    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        try:
            if method == "dynamic-int8":
                quantization.quantize_dynamic(
                    source,
                    target,
                    weight_type=quantization.QuantType.QInt8,
                    per_channel=True,
                    reduce_range=True,
                )
            elif method == "static-int8":
                reader = _Calibration(input_name, rows)
                quantization.quantize_static(
                    source,
                    target,
                    reader,
                    quant_format=quantization.QuantFormat.QDQ,
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    per_channel=True,
                    reduce_range=True,
                )
            else:
                raise ConversionError(
                    f"{method} is not an ONNX quantization; ONNX takes dynamic-int8 or "
                    "static-int8 (float16 is for --target tflite)"
                )
        except ConversionError:
            raise
        except Exception as err:  # onnxruntime.quantization raises anything
            raise ConversionError(f"{method} quantization of the ONNX model failed: {err}") from err
        quantized = target.read_bytes()
    ops = {node.op_type for node in onnx.load_from_string(quantized).graph.node}
    if not ops & QUANTIZED_OPS:
        raise ConversionError(
            f"{method} quantization left the model unchanged; use --quantize none"
        )
    return quantized
