"""What neural-network families share: their outputs, the label head and the TFLite path.

A network returns one tensor. With class labels (``--labels``) it is a classifier: that tensor is
reported as ``probabilities`` (one column per label) and the converter adds a ``label`` output,
the index of the highest column (an int64 into ``labels``), ahead of it. Without labels it is a
regressor whose tensor is reported as ``prediction``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import SourceModel, Tensors
from edge_agent.contracts.manifest import OutputSpec

__all__ = ["NetworkModel", "add_label_head", "network_outputs"]


def network_outputs(labels: list[str] | None) -> list[OutputSpec]:
    if labels is None:
        return [OutputSpec(name="prediction", kind="regression")]
    return [
        OutputSpec(name="label", kind="label", labels=labels),
        OutputSpec(name="probabilities", kind="probabilities", labels=labels),
    ]


def add_label_head(model: bytes, labels: list[str] | None) -> bytes:
    """The ONNX network with an ArgMax ``label`` output ahead of its scores (classifiers only)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_from_string(model)
    if len(proto.graph.output) != 1:
        raise ConversionError(
            f"the network returns {len(proto.graph.output)} tensors; one (batch, outputs) is needed"
        )
    if labels is None:
        return model
    scores = proto.graph.output[0]
    proto.graph.node.append(
        helper.make_node("ArgMax", [scores.name], ["label"], axis=-1, keepdims=0)
    )
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])
    outputs = [label, *proto.graph.output]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    return bytes(proto.SerializeToString())


class NetworkModel(SourceModel):
    """Base of the network families: one output tensor, optionally read as class scores."""

    tflite_capable = True

    def __init__(self, labels: list[str] | None) -> None:
        self.labels = labels

    @property
    def outputs(self) -> list[OutputSpec]:
        return network_outputs(self.labels)

    def _finish(self, scores: npt.NDArray[np.generic]) -> Tensors:
        """The raw network output as the manifest's tensors (label first, for classifiers)."""
        if self.labels is None:
            return [scores]
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ConversionError(
                f"the network returns shape {scores.shape[1:]} per row for "
                f"{len(self.labels)} labels; give one label per output column"
            )
        return [np.argmax(scores, axis=1).astype(np.int64), scores]

    def export_saved_model(self, directory: Path, onnx_model: bytes) -> None:
        from converters.targets.onnx_tf import onnx_to_saved_model

        onnx_to_saved_model(onnx_model, directory)
