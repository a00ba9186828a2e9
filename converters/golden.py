"""Choosing the golden vectors: reference rows every shipped model reproduced, with tolerances.

Golden rows are spread evenly over the reference rows that every shipped model answered within
the parity policy (so a tree row sitting on a split, or a row whose label int8 quantization
flipped, is not one). Expected values are the source model's outputs. A numeric output's
tolerance is the parity tolerance, or twice the largest error a shipped model showed on these
rows when that is larger (a quantized model), so the device check catches a runtime that answers
differently from the workstation without failing on the error quantization was accepted with.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import Tensors
from edge_agent.contracts.golden import GoldenVectors
from edge_agent.contracts.manifest import OutputSpec
from edge_agent.runners.base import flatten_outputs

__all__ = ["GOLDEN_ROWS", "build_golden", "flat_columns", "label_disagreements"]

GOLDEN_ROWS = 32


def flat_columns(
    specs: list[OutputSpec], tensors: Tensors
) -> dict[str, tuple[OutputSpec, npt.NDArray[np.generic]]]:
    """Each flattened result field (``probabilities_<label>`` ...) as a column, with its spec."""
    columns: dict[str, tuple[OutputSpec, npt.NDArray[np.generic]]] = {}
    rows = len(tensors[0])
    for spec, tensor in zip(specs, tensors, strict=False):
        flat = flatten_outputs([spec], [np.asarray(tensor)], rows)
        for name in flat[0] if flat else []:
            columns[name] = (spec, np.asarray([row[name] for row in flat]))
    return columns


def label_disagreements(
    specs: list[OutputSpec], expected: Tensors, actual: Tensors
) -> npt.NDArray[np.bool_]:
    """Per row: does any label output of ``actual`` differ from ``expected``?"""
    rows = len(expected[0])
    bad = np.zeros(rows, dtype=bool)
    for spec, want, got in zip(specs, expected, actual, strict=False):
        if spec.kind == "label":
            want_text = np.asarray([str(v) for v in np.asarray(want).reshape(rows)])
            got_text = np.asarray([_text(v) for v in np.asarray(got).reshape(rows)])
            bad |= want_text != got_text
    return bad


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def build_golden(
    features: list[str],
    rows: npt.NDArray[np.float32],
    specs: list[OutputSpec],
    expected: Tensors,
    *,
    shipped: list[Tensors],
    excluded: npt.NDArray[np.bool_],
    tolerance: dict[str, float],
    count: int = GOLDEN_ROWS,
) -> GoldenVectors:
    """Golden vectors from up to ``count`` reference rows not ``excluded``.

    ``shipped`` holds the outputs of each model going into the bundle on all reference rows;
    ``tolerance`` the parity tolerance of each (unflattened) numeric output.
    """
    candidates = np.flatnonzero(~excluded)
    for outputs in shipped:
        candidates = candidates[~label_disagreements(specs, expected, outputs)[candidates]]
    if len(candidates) == 0:
        raise ConversionError(
            "no reference row is reproduced by every converted model: no golden vectors"
        )
    pick = candidates[np.unique(np.linspace(0, len(candidates) - 1, count).astype(int))]
    chosen_expected = flat_columns(specs, [np.asarray(t)[pick] for t in expected])
    chosen_shipped = [flat_columns(specs, [np.asarray(t)[pick] for t in out]) for out in shipped]
    values: dict[str, npt.NDArray[np.generic]] = {}
    tolerances: dict[str, float] = {}
    for name, (spec, want) in chosen_expected.items():
        if want.dtype.kind in "US" or spec.kind == "label":
            values[name] = want if want.dtype.kind in "US" else want.astype(np.float64)
            tolerances[name] = 0.0
            continue
        want_f: npt.NDArray[np.float64] = want.astype(np.float64)
        values[name] = want_f
        observed = max(
            (
                float(np.nanmax(np.abs(out[name][1].astype(np.float64) - want_f), initial=0))
                for out in chosen_shipped
            ),
            default=0.0,
        )
        tolerances[name] = max(tolerance.get(spec.name, 0.0), 2 * observed)
    return GoldenVectors(
        inputs=rows[pick].astype(np.float32),
        feature_names=list(features),
        expected=values,
        tolerance=tolerances,
    )
