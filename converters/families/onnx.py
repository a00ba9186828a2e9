"""An existing ONNX network: checked, given a label head if it is a classifier, and passed on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import Tensors
from converters.families.network import NetworkModel, add_label_head
from converters.targets.onnx import check_single_input

__all__ = ["OnnxModel", "load_onnx"]


def load_onnx(path: Path, labels: list[str] | None) -> OnnxModel:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConversionError(f"cannot read {path}: {err}") from err
    return OnnxModel(data, labels, str(path))


class OnnxModel(NetworkModel):
    """An ONNX model with one ``(batch, features)`` float input and one output tensor.

    The source of truth for parity is the file itself run by onnxruntime: the ONNX target is
    then the same graph, and the TFLite target is checked against it.
    """

    framework = "onnx"

    def __init__(self, model: bytes, labels: list[str] | None, name: str = "model.onnx") -> None:
        import onnx
        import onnxruntime as ort

        super().__init__(labels)
        check_single_input(model, name)
        self.model = model
        proto = onnx.load_from_string(model)
        self.description = f"ONNX graph {proto.graph.name or name}"
        self.opset = next(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None
        )
        try:
            self._session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ConversionError(f"onnxruntime cannot load {name}: {err}") from err
        self._input = self._session.get_inputs()[0]
        if len(self._session.get_outputs()) != 1:
            names = ", ".join(o.name for o in self._session.get_outputs())
            raise ConversionError(
                f"{name} returns {len(self._session.get_outputs())} tensors ({names}); an ONNX "
                "source must return one (batch, outputs) tensor"
            )

    @property
    def n_features(self) -> int | None:
        width = self._input.shape[-1]
        return width if isinstance(width, int) else None

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime as ort

        return {"onnx": onnx.__version__, "onnxruntime": ort.__version__}

    def predict(self, rows: npt.NDArray[np.float32], features: list[str]) -> Tensors:
        outputs = self._session.run(None, {self._input.name: rows})
        return self._finish(np.asarray(outputs[0]))

    def to_onnx(self, rows: npt.NDArray[np.float32], features: list[str]) -> bytes:
        return add_label_head(self.model, self.labels)
