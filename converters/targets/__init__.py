"""Conversion targets: ONNX (every family) and TFLite (neural networks)."""
