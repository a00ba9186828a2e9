"""LiteRT (TensorFlow Lite) runner: ``ai_edge_litert``, or ``tflite_runtime`` where it is alone."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError

__all__ = ["LiteRtRunner", "load_interpreter_class"]

SIGNATURE = "serving_default"
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def load_interpreter_class() -> Any:
    """The ``Interpreter`` class of whichever LiteRT package is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter
        except ImportError as err:
            raise ModelError(
                "no LiteRT runtime is installed: pip install ai-edge-litert "
                "(or tflite-runtime on older devices)"
            ) from err
        _refuse_numpy_2_beside(tflite_runtime.__version__)
    return Interpreter


def _refuse_numpy_2_beside(tflite_runtime_version: str) -> None:
    """tflite-runtime's releases (the last is 2.14) are built against NumPy 1.x.

    Under NumPy 2 its extension fails on the first model with an internal ``SystemError``:
    refuse before that, saying what to install instead.
    """
    numpy_major = int(np.__version__.split(".")[0])
    if numpy_major >= 2 and _major_minor(tflite_runtime_version) <= (2, 14):
        raise ModelError(
            f"tflite-runtime {tflite_runtime_version} is built for NumPy 1.x and cannot run with "
            f"NumPy {np.__version__}: pip install ai-edge-litert, or numpy<2 beside tflite-runtime"
        )


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = (int(part) for part in version.split(".")[:2])
    return major, minor


def _output_order(name: str) -> tuple[int, str]:
    """Signature outputs are named ``output_0``, ``output_1`` ...: sort them by that number."""
    match = _TRAILING_NUMBER.search(name)
    return (int(match.group(1)) if match else -1, name)


class LiteRtRunner:
    """One LiteRT interpreter on the CPU.

    The input is ``(batch, features)`` with a dynamic batch: the input tensor is resized whenever
    the batch size changes. Outputs come back in the order of the model's ``serving_default``
    signature (``output_0``, ``output_1`` ...), which is the manifest's order; models without a
    signature give them in the interpreter's order.
    """

    format = "tflite"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        interpreter_class = load_interpreter_class()
        try:
            self._interpreter = interpreter_class(model_content=model, num_threads=threads)
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"LiteRT cannot load the model: {err}") from err
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelError(
                f"the model takes {len(inputs)} inputs; one (batch, features) is needed"
            )
        shape = list(inputs[0]["shape"])
        if len(shape) != 2:
            raise ModelError(f"the model's input shape {shape} is not (batch, features)")
        self._input = int(inputs[0]["index"])
        self._input_dtype = inputs[0]["dtype"]
        self.input_width = int(shape[1])
        self._outputs = self._output_indices()
        self._batch = -1

    def _output_indices(self) -> list[int]:
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE in signatures:
            runner = self._interpreter.get_signature_runner(SIGNATURE)
            details = runner.get_output_details()
            del runner  # it holds tensor views that would block resizing the input later
            return [int(details[name]["index"]) for name in sorted(details, key=_output_order)]
        return [int(detail["index"]) for detail in self._interpreter.get_output_details()]

    def warmup(self) -> None:
        self.predict(np.zeros((1, self.input_width), dtype=np.float32))

    def predict(self, rows: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        if rows.ndim != 2 or rows.shape[1] != self.input_width:
            raise ModelError(f"expected rows of {self.input_width} features, got {rows.shape}")
        try:
            if rows.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input, list(rows.shape))
                self._interpreter.allocate_tensors()
                self._batch = rows.shape[0]
            self._interpreter.set_tensor(self._input, rows.astype(self._input_dtype, copy=False))
            self._interpreter.invoke()
            # get_tensor copies, so no view into the interpreter outlives this call.
            return [np.asarray(self._interpreter.get_tensor(index)) for index in self._outputs]
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"inference failed: {err}") from err
