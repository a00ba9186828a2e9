"""The TFLite target: a TensorFlow SavedModel to a ``.tflite`` flatbuffer, optionally quantized."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError

__all__ = ["INPUT_NAME", "SIGNATURE", "import_tensorflow", "saved_model_to_tflite"]

SIGNATURE = "serving_default"
INPUT_NAME = "input"
_CALIBRATION_BATCH = 32
# A quantized model holds tensors of these types; a model without any was left float.
_QUANTIZED_TYPES = {
    "float16": {"float16"},
    "dynamic-int8": {"int8"},
    "static-int8": {"int8"},
}


def import_tensorflow() -> Any:
    """TensorFlow, imported quietly (it logs pages on import), or a one-line install hint."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ConversionError(
            "this needs TensorFlow: pip install 'edge-inference[convert-tf]'"
        ) from err
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def saved_model_to_tflite(directory: Path, quantize: str, rows: npt.NDArray[np.float32]) -> bytes:
    """Convert the SavedModel in ``directory`` (signature ``serving_default``).

    ``quantize``: ``none``; ``float16`` (weights stored as float16); ``dynamic-int8`` (int8
    weights); ``static-int8`` (int8 weights and activations, the representative dataset drawn
    from ``rows``). Inputs and outputs stay float32 so the agent feeds every model alike.
    """
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(directory), [SIGNATURE])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "static-int8":

        def representative() -> Iterator[dict[str, npt.NDArray[np.float32]]]:
            for start in range(0, len(rows), _CALIBRATION_BATCH):
                yield {INPUT_NAME: rows[start : start + _CALIBRATION_BATCH]}

        converter.representative_dataset = representative
    elif quantize not in ("none", "dynamic-int8"):
        raise ConversionError(
            f"unknown quantization {quantize}: none, dynamic-int8, static-int8 or float16"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # calibration warns about TensorFlow's own interpreter
            model: bytes = converter.convert()
    except Exception as err:  # the TFLite converter raises ConverterError and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(f"the TFLite converter refused the model: {first}") from err
    if quantize != "none" and not _tensor_types(model) & _QUANTIZED_TYPES[quantize]:
        raise ConversionError(
            f"{quantize} left the TFLite model unchanged (the converter keeps weight tensors "
            "under 1024 values in float32); use --quantize none"
        )
    return model


def _tensor_types(model: bytes) -> set[str]:
    """The element types of the tensors in a TFLite model (float32, int8, float16 ...)."""
    from edge_agent.runners.litert import load_interpreter_class

    interpreter = load_interpreter_class()(model_content=model)
    return {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
