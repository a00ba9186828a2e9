"""Keras models (``.keras`` or ``.h5``): TFLite directly, ONNX through tf2onnx.

Both exports trace the same function, ``serving_default``, which returns the manifest's outputs
as ``output_0``, ``output_1`` ... (the label head first for classifiers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import Tensors
from converters.families.network import NetworkModel
from converters.targets.onnx import OPSET
from converters.targets.tflite import INPUT_NAME, SIGNATURE, import_tensorflow

__all__ = ["KerasModel", "load_keras"]


def load_keras(path: Path, labels: list[str] | None) -> KerasModel:
    import_tensorflow()
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError and its own errors
        raise ConversionError(f"cannot load a Keras model from {path}: {err}") from err
    return KerasModel(model, labels)


class KerasModel(NetworkModel):
    """A built Keras model with one ``(batch, features)`` input and one output."""

    framework = "keras"

    def __init__(self, model: Any, labels: list[str] | None) -> None:
        super().__init__(labels)
        self.model = model
        self.description = f"{type(model).__name__} {model.name}"
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            shapes = [tuple(i.shape) for i in inputs]
            raise ConversionError(
                f"the Keras model takes inputs {shapes}; one (batch, features) input is needed"
            )

    @property
    def n_features(self) -> int | None:
        width = self.model.inputs[0].shape[-1]
        return int(width) if width is not None else None

    def versions(self) -> dict[str, str]:
        import keras
        import tf2onnx

        tf = import_tensorflow()
        return {
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
        }

    def predict(self, rows: npt.NDArray[np.float32], features: list[str]) -> Tensors:
        return self._finish(np.asarray(self.model(rows, training=False)))

    def _serve(self) -> tuple[Any, list[Any]]:
        """The function both exports trace, and its input signature."""
        tf = import_tensorflow()
        spec = [tf.TensorSpec([None, self.n_features], tf.float32, name=INPUT_NAME)]

        def serve(rows: Any) -> dict[str, Any]:
            scores = self.model(rows, training=False)
            if self.labels is None:
                return {"output_0": scores}
            return {"output_0": tf.math.argmax(scores, axis=-1), "output_1": scores}

        return serve, spec

    def to_onnx(self, rows: npt.NDArray[np.float32], features: list[str]) -> bytes:
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        tf = import_tensorflow()
        serve, spec = self._serve()
        try:
            # Freeze first: tf2onnx would turn the captured Keras variables into model inputs.
            frozen = convert_variables_to_constants_v2(
                tf.function(serve, input_signature=spec).get_concrete_function()
            )
            proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(),
                input_names=[tensor.name for tensor in frozen.inputs],
                output_names=[tensor.name for tensor in frozen.outputs],  # output_0, output_1
                opset=OPSET,
            )
        except Exception as err:  # tf2onnx raises anything
            raise ConversionError(f"tf2onnx cannot convert the Keras model: {err}") from err
        return bytes(proto.SerializeToString())

    def export_saved_model(self, directory: Path, onnx_model: bytes) -> None:
        import keras

        serve, spec = self._serve()
        # ExportArchive tracks the Keras variables; a bare tf.Module would lose them.
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint(SIGNATURE, serve, input_signature=spec)
        archive.write_out(str(directory), verbose=False)
