"""Model families: one module per framework, and the one place that picks the family of a model.

Loading a pickle (joblib, pickle, a pickled PyTorch module) runs code from the file: the converter
is a workstation tool. Nothing on a device ever unpickles; bundles hold ONNX, TFLite, JSON, npz.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.families.base import SourceModel

__all__ = ["MODEL_SUFFIXES", "SourceModel", "load_source", "wrap_model"]

# File suffixes and the family that reads them; anything else is tried as a joblib/pickle file.
MODEL_SUFFIXES = {
    ".onnx": "onnx",
    ".keras": "keras",
    ".h5": "keras",
    ".pt": "torch",
    ".pth": "torch",
    ".ts": "torch",
}
# How a pickle (protocol 2 and later) or a joblib-compressed pickle begins; anything else is not
# unpickled at all.
_PICKLE_STARTS = (
    b"\x80",  # pickle protocol >= 2
    b"\x78",  # zlib
    b"\x1f\x8b",  # gzip
    b"BZh",  # bz2
    b"\xfd7zXZ",  # xz
    b"]\x00\x00",  # lzma
    b"\x04\x22\x4d\x18",  # lz4
    b"ZF",  # joblib's own zlib format
)
_EXPECTED = (
    "a joblib/pickle file of a scikit-learn, LightGBM or XGBoost model, a PyTorch file "
    "(.pt/.pth), a Keras file (.keras/.h5) or an ONNX file (.onnx)"
)


def _top_module(obj: Any) -> set[str]:
    return {cls.__module__.split(".")[0] for cls in type(obj).__mro__}


def wrap_model(model: Any, *, labels: list[str] | None = None) -> SourceModel:
    """The family wrapper of an in-memory model (a fitted estimator, an nn.Module, a Keras
    model). Libraries are imported only for the family the object belongs to."""
    if isinstance(model, SourceModel):
        return model
    modules = _top_module(model)
    if "torch" in modules:
        from converters.families.torch import TorchModel

        return TorchModel(model, labels)
    if "keras" in modules or "tf_keras" in modules:
        from converters.families.keras import KerasModel

        return KerasModel(model, labels)
    if hasattr(model, "fit") and hasattr(model, "predict") and hasattr(model, "get_params"):
        from converters.families.sklearn import SklearnModel

        if labels is not None:
            raise ConversionError(
                "--labels is for networks; a scikit-learn classifier carries its own classes"
            )
        return SklearnModel(model)
    raise ConversionError(f"a {type(model).__module__}.{type(model).__name__} is not {_EXPECTED}")


def load_source(
    model: Path | Any,
    *,
    labels: list[str] | None = None,
    model_class: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> SourceModel:
    """Load a model file (or take a model object) and wrap it in its family."""
    if not isinstance(model, Path):
        return wrap_model(model, labels=labels)
    if not model.is_file():
        raise ConversionError(f"{model}: no such model file; expected {_EXPECTED}")
    if model.stat().st_size == 0:
        raise ConversionError(f"{model} is empty; expected {_EXPECTED}")
    family = MODEL_SUFFIXES.get(model.suffix.lower())
    if family == "onnx":
        from converters.families.onnx import load_onnx

        return load_onnx(model, labels)
    if family == "keras":
        from converters.families.keras import load_keras

        return load_keras(model, labels)
    if family == "torch":
        from converters.families.torch import load_torch

        return load_torch(model, model_class=model_class, model_kwargs=model_kwargs, labels=labels)
    with model.open("rb") as handle:
        head = handle.read(8)
    if not head.startswith(_PICKLE_STARTS):
        raise ConversionError(f"{model} is not a joblib/pickle file; expected {_EXPECTED}")
    import joblib

    try:
        loaded = joblib.load(model)
    except Exception as err:  # unpickling can raise anything
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConversionError(f"cannot load {model}: {first}; expected {_EXPECTED}") from err
    return wrap_model(loaded, labels=labels)
