"""onnxruntime runner."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_agent.errors import ModelError

__all__ = ["OnnxRunner"]


class OnnxRunner:
    """One onnxruntime session on the CPU, with thread counts fixed at load."""

    format = "onnx"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"onnxruntime cannot load the model: {err}") from err
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"the model takes {len(inputs)} inputs; one (batch, features) is needed"
            )
        self._input = inputs[0].name
        shape = inputs[0].shape
        width = shape[-1] if len(shape) == 2 else None
        if not isinstance(width, int):
            raise ModelError(f"the model's input shape {shape} is not (batch, features)")
        self.input_width = width
        self.output_names = [output.name for output in self._session.get_outputs()]

    def warmup(self) -> None:
        self.predict(np.zeros((1, self.input_width), dtype=np.float32))

    def predict(self, rows: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        try:
            outputs = self._session.run(None, {self._input: rows})
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"inference failed: {err}") from err
        return [np.asarray(output) for output in outputs]
