"""PyTorch networks (an MLP, a 1-D CNN ...): TorchScript, a state dict with its class, or a module.

Exported with ``torch.onnx.export``'s TorchScript-based exporter at the pinned opset, the batch
axis dynamic. The network takes ``(batch, features)`` float32 rows and returns one tensor.
"""

from __future__ import annotations

import importlib
import io
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import Tensors
from converters.families.network import NetworkModel, add_label_head
from converters.targets.onnx import OPSET

__all__ = ["TorchModel", "import_class", "load_torch"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ConversionError(
            "this model needs PyTorch: pip install 'edge-inference[convert-torch]'"
        ) from err
    return torch


def import_class(spec: str) -> Any:
    """``package.module:Class`` (or ``package.module.Class``), importable from the current
    directory too, where a training script's model class usually lives."""
    module_name, _, class_name = spec.replace(":", ".").rpartition(".")
    if not module_name:
        raise ConversionError(f"--model-class {spec!r}: expected module:Class")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConversionError(f"--model-class {spec}: cannot import {module_name}: {err}") from err
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConversionError(f"--model-class {spec}: {module_name} has no {class_name}") from None


def load_torch(
    path: Path,
    *,
    model_class: str | None,
    model_kwargs: Mapping[str, Any] | None,
    labels: list[str] | None,
) -> TorchModel:
    """A TorchScript archive, a state dict (with ``model_class``) or a pickled ``nn.Module``."""
    torch = _torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is still common
            return TorchModel(torch.jit.load(str(path), map_location="cpu"), labels)
    except RuntimeError:
        pass  # not TorchScript: a state dict or a pickled module
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # weights_only refuses anything beyond tensors and containers
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # unpickling can raise anything
            raise ConversionError(f"cannot load a PyTorch model from {path}: {err}") from err
    if isinstance(loaded, torch.nn.Module):
        return TorchModel(loaded, labels)
    if not isinstance(loaded, Mapping):
        raise ConversionError(
            f"{path} holds a {type(loaded).__name__}; expected TorchScript, an nn.Module or a "
            "state dict"
        )
    if model_class is None:
        raise ConversionError(
            f"{path} is a state dict: give --model-class module:Class to build the network"
        )
    cls = import_class(model_class)
    try:
        module = cls(**dict(model_kwargs or {}))
        module.load_state_dict(loaded)
    except Exception as err:  # the user's constructor and load_state_dict raise anything
        raise ConversionError(
            f"the state dict in {path} does not fit {model_class}: {str(err).splitlines()[0]}"
        ) from err
    return TorchModel(module, labels)


class TorchModel(NetworkModel):
    """A PyTorch module in eval mode."""

    framework = "pytorch"

    def __init__(self, module: Any, labels: list[str] | None) -> None:
        super().__init__(labels)
        self.module = module.eval()
        self.description = type(module).__name__
        if self.description == "RecursiveScriptModule":
            self.description = f"TorchScript {module.original_name}"

    @property
    def n_features(self) -> int | None:
        torch = _torch()
        first = next((m for m in self.module.modules() if not list(m.children())), None)
        if isinstance(first, torch.nn.Linear):
            return int(first.in_features)
        return None

    def versions(self) -> dict[str, str]:
        import onnx

        return {"torch": str(_torch().__version__), "onnx": onnx.__version__}

    def _run(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = _torch()
        try:
            with torch.no_grad():
                output = self.module(torch.from_numpy(np.ascontiguousarray(rows)))
        except Exception as err:  # a shape mismatch surfaces as RuntimeError, or anything else
            raise ConversionError(
                f"the network cannot take rows of {rows.shape[1]} features: "
                f"{str(err).splitlines()[0]}"
            ) from err
        if not isinstance(output, torch.Tensor):
            raise ConversionError(
                f"the network returns {type(output).__name__}; one tensor is needed"
            )
        result: npt.NDArray[np.float32] = output.numpy()
        return result

    def predict(self, rows: npt.NDArray[np.float32], features: list[str]) -> Tensors:
        return self._finish(self._run(rows))

    def to_onnx(self, rows: npt.NDArray[np.float32], features: list[str]) -> bytes:
        torch = _torch()
        self._run(rows[:2])  # a clear error for the wrong feature count before the exporter's
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about its own deprecation
            try:
                torch.onnx.export(
                    self.module,
                    (torch.from_numpy(np.ascontiguousarray(rows[:2])),),
                    buffer,
                    dynamo=False,
                    input_names=["input"],
                    output_names=["scores"],
                    dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}},
                    opset_version=OPSET,
                )
            except Exception as err:  # the exporter raises anything
                raise ConversionError(
                    f"torch.onnx.export failed: {str(err).splitlines()[0]}"
                ) from err
        return add_label_head(buffer.getvalue(), self.labels)
