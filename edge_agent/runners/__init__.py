"""Model runners: one per model format, behind the ModelRunner interface."""

from __future__ import annotations

from edge_agent.contracts.bundle import Bundle
from edge_agent.errors import ModelError
from edge_agent.runners.base import ModelRunner, flatten_outputs

__all__ = ["ModelRunner", "build_runner", "flatten_outputs"]


def build_runner(bundle: Bundle, *, preference: str = "auto", threads: int = 1) -> ModelRunner:
    """The registry from a bundle's formats to a runner. Call off the event loop: it loads."""
    formats = bundle.manifest.formats
    if preference in ("auto", "onnx") and "onnx" in formats:
        from edge_agent.runners.onnx import OnnxRunner

        return OnnxRunner(bundle.file("model.onnx"), threads=threads)
    if preference in ("auto", "tflite") and "tflite" in formats:
        from edge_agent.runners.litert import LiteRtRunner

        return LiteRtRunner(bundle.file("model.tflite"), threads=threads)
    raise ModelError(
        f"bundle {bundle.manifest.label} has {', '.join(formats)}; runner {preference!r} "
        "cannot run any of them"
    )
