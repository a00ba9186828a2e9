"""What every model family gives the converter: its outputs, a reference predict, its exports."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.targets.onnx import OPSET
from edge_agent.contracts.manifest import OutputSpec

__all__ = ["SourceModel", "Tensors"]

# Output tensors in the manifest's order, each with the batch on axis 0.
Tensors = list[npt.NDArray[np.generic]]


class SourceModel(ABC):
    """A trained model as its data scientist saved it, wrapped for conversion.

    Subclasses set ``framework`` and ``description`` and say what the model outputs. ``predict``
    runs the original model (the truth parity is measured against); its tensors follow
    ``outputs`` one to one, exactly as the converted models must.
    """

    framework: str  # scikit-learn, lightgbm, xgboost, pytorch, keras, onnx
    description: str  # what a person would call the model: Pipeline(StandardScaler, SVC)
    tree_ensemble: bool = False  # float32 thresholds may flip rows sitting on a split
    tflite_capable: bool = False  # TFLite expresses neural networks, not trees or pipelines
    opset: int | None = OPSET  # the ONNX opset of the export (an ONNX source keeps its own)

    @property
    def n_features(self) -> int | None:
        """How many inputs the model takes, when the model says."""
        return None

    @property
    def feature_names(self) -> list[str] | None:
        """The names the model was fitted with (a DataFrame's columns), when it kept them."""
        return None

    @property
    @abstractmethod
    def outputs(self) -> list[OutputSpec]:
        """The model's outputs, in the order of the tensors ``predict`` and the exports return."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the framework and of the exporters used, for the manifest."""

    @abstractmethod
    def predict(self, rows: npt.NDArray[np.float32], features: list[str]) -> Tensors:
        """Run the original model on ``rows`` (columns named ``features``)."""

    @abstractmethod
    def to_onnx(self, rows: npt.NDArray[np.float32], features: list[str]) -> bytes:
        """The model as ONNX with one float input ``(batch, features)``, opset pinned."""

    def export_saved_model(self, directory: Path, onnx_model: bytes) -> None:
        """Write a TensorFlow SavedModel whose ``serving_default`` returns ``output_<i>``.

        ``onnx_model`` is this model's ONNX export, for families that translate from it.
        Called only when ``tflite_capable``.
        """
        raise ConversionError(f"{self.description} cannot be exported to TensorFlow")
