"""The parity certificate: does the converted model answer like the source on the reference rows?

The tolerance policy, applied to every conversion:

- ``label`` outputs must agree row by row;
- ``probabilities`` must agree within ``tolerance`` (1e-4) in absolute terms;
- ``regression`` and ``anomaly_score`` outputs within ``tolerance`` times their scale,
  ``max(1, largest |value| on the reference rows)``;
- a row breaking any of these is a disagreeing row. Float models (linear, networks) may have
  none. Tree ensembles may have up to ``tree_row_share`` (1 %, rounded up) of the rows: they
  compare a float32 input against float32 thresholds, so a row sitting exactly on a split of the
  float64 source model can take the other branch. Those rows are listed in the certificate and
  printed, never hidden; beyond the share the bundle is refused.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families.base import Tensors
from edge_agent.contracts.manifest import ModelFormat, OutputSpec, ParityReport

__all__ = ["Comparison", "ParityPolicy", "compare"]

# The certificate lists at most this many disagreeing rows; the count says how many there were.
MAX_LISTED_ROWS = 200
# Relative errors divide by |expected|, but never by less than this: near zero only the absolute
# error means anything.
RELATIVE_FLOOR = 1e-3


@dataclass(frozen=True)
class ParityPolicy:
    """How close is close enough (see the module docstring)."""

    tolerance: float = 1e-4
    tree_row_share: float = 0.01

    def __post_init__(self) -> None:
        if not self.tolerance >= 0 or not 0 <= self.tree_row_share <= 1:
            raise ConversionError("the tolerance must be >= 0 and the tree row share in [0, 1]")

    def allowed_rows(self, rows: int, tree_ensemble: bool) -> int:
        return math.ceil(self.tree_row_share * rows) if tree_ensemble else 0

    def describe(self, tree_ensemble: bool) -> str:
        text = (
            f"labels agree; probabilities within {self.tolerance:g} absolute; regression and "
            f"scores within {self.tolerance:g} x max(1, largest |value|)"
        )
        if tree_ensemble:
            text += (
                f"; tree ensemble: up to {self.tree_row_share:.0%} of rows (rounded up) may "
                "disagree where float32 thresholds flip a row on a split, all listed"
            )
        else:
            text += "; every row"
        return text


@dataclass(frozen=True)
class Comparison:
    """A parity report and, per reference row, whether that row broke a tolerance."""

    report: ParityReport
    bad_rows: npt.NDArray[np.bool_]
    tolerance: dict[str, float]


def _same_labels(
    expected: npt.NDArray[np.generic], actual: npt.NDArray[np.generic]
) -> npt.NDArray[np.bool_]:
    if expected.dtype.kind in "biuf" and actual.dtype.kind in "biuf":
        return np.asarray(expected.astype(np.float64) == actual.astype(np.float64))
    as_text = np.vectorize(
        lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[np.str_]
    )
    return np.asarray(as_text(expected) == as_text(actual))


def _errors(
    expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Absolute errors; two NaNs agree (a missing value stays missing), one NaN is infinite."""
    with np.errstate(invalid="ignore"):
        diff = np.abs(expected - actual)
    both_nan = np.isnan(expected) & np.isnan(actual)
    return np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))


def _finite(value: float) -> float:
    """JSON has no infinity: a row where only one side is NaN reports the largest float."""
    return value if math.isfinite(value) else sys.float_info.max


def compare(
    specs: list[OutputSpec],
    expected: Tensors,
    actual: Tensors,
    *,
    policy: ParityPolicy,
    tree_ensemble: bool,
    model_format: ModelFormat | None = None,
) -> Comparison:
    """Compare ``actual`` output tensors with ``expected`` ones under ``policy``."""
    if len(actual) < len(specs):
        raise ConversionError(
            f"the converted model returns {len(actual)} outputs; the source gives {len(specs)}"
        )
    rows = len(expected[0])
    bad = np.zeros(rows, dtype=bool)
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    tolerance: dict[str, float] = {}
    agreement: float | None = None
    for spec, want, got in zip(specs, expected, actual, strict=False):
        want2, got2 = np.asarray(want).reshape(rows, -1), np.asarray(got).reshape(len(got), -1)
        if want2.shape != got2.shape:
            raise ConversionError(
                f"output {spec.name}: the converted model gives shape {got2.shape}, the source "
                f"{want2.shape}"
            )
        if spec.kind == "label":
            same = _same_labels(want2, got2).all(axis=1)
            agreement = float(same.mean())
            bad |= ~same
            continue
        want_f, got_f = want2.astype(np.float64), got2.astype(np.float64)
        errors = _errors(want_f, got_f)
        finite = want_f[np.isfinite(want_f)]
        scale = (
            1.0 if spec.kind == "probabilities" else max(1.0, float(np.abs(finite).max(initial=0)))
        )
        tolerance[spec.name] = policy.tolerance * scale
        row_errors = errors.max(axis=1)
        bad |= row_errors > tolerance[spec.name]
        max_abs[spec.name] = _finite(float(row_errors.max(initial=0.0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = errors / np.maximum(np.abs(want_f), RELATIVE_FLOOR)
        max_rel[spec.name] = _finite(float(np.nan_to_num(relative, nan=0.0).max(initial=0.0)))
    disagreeing = np.flatnonzero(bad)
    allowed = policy.allowed_rows(rows, tree_ensemble)
    report = ParityReport(
        passed=len(disagreeing) <= allowed,
        rows=rows,
        policy=policy.describe(tree_ensemble),
        format=model_format,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        tolerance=tolerance,
        label_agreement=agreement,
        disagreeing_rows=disagreeing[:MAX_LISTED_ROWS].tolist(),
        disagreeing_count=len(disagreeing),
        allowed_disagreeing_rows=allowed,
    )
    return Comparison(report, bad, tolerance)
