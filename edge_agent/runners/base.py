"""The model runner interface and the mapping from raw output tensors to flat result fields."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.manifest import OutputSpec
from edge_agent.contracts.payloads import OutputValue
from edge_agent.errors import ModelError

__all__ = ["ModelRunner", "flatten_outputs"]


class ModelRunner(Protocol):
    """Runs one model. Built (and loaded) off the event loop; ``predict`` is CPU-bound and
    synchronous, called from one worker thread at a time; it never touches the event loop."""

    format: str
    input_width: int

    def warmup(self) -> None:
        """Run the model once on zeros so the first real window is not slowed by lazy init."""
        ...

    def predict(self, rows: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        """Run a batch ``(n, input_width)``; return the output tensors in the model's order,
        each with the batch on axis 0. Raise ModelError on failure."""
        ...


def _scalar(value: object) -> OutputValue:
    item = value.item() if isinstance(value, np.generic) else value
    if isinstance(item, bytes):
        return item.decode(errors="replace")
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, int | float | str):
        return item
    raise ModelError(f"output value of type {type(item).__name__} cannot be reported")


def flatten_outputs(
    specs: list[OutputSpec], tensors: list[npt.NDArray[np.generic]], batch: int
) -> list[dict[str, OutputValue]]:
    """One flat dict per row: ``label``, ``probabilities_<class>``, ``score`` or ``name_<i>``.

    Tensor i is described by spec i; a model with fewer outputs than specs is refused.
    """
    if len(tensors) < len(specs):
        raise ModelError(
            f"the model returns {len(tensors)} outputs but the manifest describes {len(specs)}"
        )
    rows: list[dict[str, OutputValue]] = [{} for _ in range(batch)]
    for spec, tensor in zip(specs, tensors, strict=False):
        if tensor.shape[0] != batch:
            raise ModelError(f"output {spec.name} has {tensor.shape[0]} rows for {batch} inputs")
        flat = tensor.reshape(batch, -1)
        width = flat.shape[1]
        if spec.kind == "probabilities":
            labels = spec.labels or [str(i) for i in range(width)]
            if len(labels) != width:
                raise ModelError(f"output {spec.name} has {width} columns for {len(labels)} labels")
            names = [f"{spec.name}_{label}" for label in labels]
        elif width == 1:
            names = [spec.name]
        else:
            names = [f"{spec.name}_{i}" for i in range(width)]
        for row, values in zip(rows, flat, strict=True):
            for name, value in zip(names, values, strict=True):
                row[name] = _scalar(value)
    return rows
