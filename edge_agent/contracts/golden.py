"""Golden vectors (``golden.npz``): rows with the source model's outputs, re-run before activation.

The converter writes them from reference rows the converted model reproduced at packing time; the
device runs the same rows through the model it is about to activate and compares with
:func:`check_golden`, the one comparison both sides use. The file is a plain NumPy ``.npz`` read
with ``allow_pickle=False``: nothing in it can run code.

Outputs are the flattened result fields (``label``, ``probabilities_<class>``, ``score`` ...; see
``edge_agent.runners.base.flatten_outputs``). Numeric outputs pass within their absolute
tolerance; text outputs (string class labels) must match exactly.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.payloads import OutputValue

__all__ = [
    "GOLDEN_FILE",
    "GoldenError",
    "GoldenResult",
    "GoldenVectors",
    "Predict",
    "check_golden",
]

GOLDEN_FILE = "golden.npz"
GOLDEN_SCHEMA_VERSION = 1

# What check_golden runs: a batch of rows in, one flat dict of output values per row out.
Predict = Callable[[npt.NDArray[np.float32]], Sequence[Mapping[str, OutputValue]]]


class GoldenError(ValueError):
    """A golden file is unreadable or inconsistent (the message says which part)."""


@dataclass(frozen=True)
class GoldenVectors:
    """Input rows, the outputs expected for them and the absolute tolerance of each output."""

    inputs: npt.NDArray[np.float32]  # (rows, features)
    feature_names: list[str]
    expected: dict[str, npt.NDArray[np.generic]]  # flattened output name -> (rows,) values
    tolerance: dict[str, float]  # absolute; ignored for text outputs, which must match exactly

    def __post_init__(self) -> None:
        if self.inputs.ndim != 2 or self.inputs.shape[1] != len(self.feature_names):
            raise GoldenError(
                f"inputs have shape {self.inputs.shape} for {len(self.feature_names)} features"
            )
        if set(self.expected) != set(self.tolerance):
            raise GoldenError("every expected output needs a tolerance, and only those")
        for name, values in self.expected.items():
            if values.shape != (self.inputs.shape[0],):
                raise GoldenError(
                    f"output {name} has shape {values.shape} for {self.inputs.shape[0]} rows"
                )
            if not self.tolerance[name] >= 0:
                raise GoldenError(f"output {name} has a negative tolerance")

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])

    def to_bytes(self) -> bytes:
        names = sorted(self.expected)
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "schema_version": np.asarray(GOLDEN_SCHEMA_VERSION),
            "inputs": np.asarray(self.inputs, dtype=np.float32),
            "feature_names": np.asarray(self.feature_names, dtype=np.str_),
            "output_names": np.asarray(names, dtype=np.str_),
            "tolerances": np.asarray([self.tolerance[n] for n in names], dtype=np.float64),
        }
        for index, name in enumerate(names):
            arrays[f"expected_{index}"] = self.expected[name]
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GoldenVectors:
        """Read a golden file; raise GoldenError saying what is wrong with it."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise GoldenError(
                f"{GOLDEN_FILE} is not a readable .npz without pickles: {err}"
            ) from err
        required = ("schema_version", "inputs", "feature_names", "output_names", "tolerances")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise GoldenError(f"{GOLDEN_FILE} lacks {', '.join(missing)}")
        version = int(arrays["schema_version"])
        if version != GOLDEN_SCHEMA_VERSION:
            raise GoldenError(
                f"{GOLDEN_FILE} has schema_version {version}; this build reads "
                f"{GOLDEN_SCHEMA_VERSION}"
            )
        names = [str(name) for name in arrays["output_names"].tolist()]
        tolerances = arrays["tolerances"].astype(np.float64).tolist()
        if len(tolerances) != len(names):
            raise GoldenError(f"{GOLDEN_FILE} has {len(tolerances)} tolerances for {len(names)}")
        expected = {}
        for index, name in enumerate(names):
            key = f"expected_{index}"
            if key not in arrays:
                raise GoldenError(f"{GOLDEN_FILE} lacks the expected values of {name}")
            expected[name] = arrays[key]
        return cls(
            inputs=arrays["inputs"].astype(np.float32),
            feature_names=[str(name) for name in arrays["feature_names"].tolist()],
            expected=expected,
            tolerance=dict(zip(names, tolerances, strict=True)),
        )


@dataclass(frozen=True)
class GoldenResult:
    """The verdict of one golden run: per-output worst error and the rows that broke tolerance."""

    passed: bool
    rows: int
    max_abs_error: dict[str, float]  # numeric outputs only
    failures: dict[str, list[int]] = field(default_factory=dict)  # output -> failing rows
    missing: list[str] = field(default_factory=list)  # expected outputs the model did not give

    @property
    def disagreeing_rows(self) -> list[int]:
        return sorted({row for rows in self.failures.values() for row in rows})

    def describe(self) -> str:
        """One line a person can act on."""
        if self.passed:
            return f"golden vectors: all {self.rows} rows agree"
        parts = [f"missing output {name}" for name in self.missing]
        for name, rows in sorted(self.failures.items()):
            if name in self.missing:
                continue
            error = self.max_abs_error.get(name)
            worst = f", max error {error:.3g}" if error is not None else ""
            parts.append(f"{name} off on rows {_rows_text(rows)}{worst}")
        return f"golden vectors disagree on {len(self.disagreeing_rows)} of {self.rows} rows: " + (
            "; ".join(parts)
        )


def _rows_text(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(row) for row in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def _as_float(value: object) -> float | None:
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return float(value)
    return None


def _numeric_errors(expected: npt.NDArray[np.generic], actual: Sequence[object]) -> list[float]:
    """Absolute error per row; NaN where they agree on NaN is 0, a non-number is infinite."""
    errors = []
    for want, got in zip(expected.tolist(), actual, strict=True):
        got_value = _as_float(got)
        if got_value is None:
            errors.append(math.inf)
        elif math.isnan(want) and math.isnan(got_value):
            errors.append(0.0)
        elif math.isnan(want) or math.isnan(got_value):
            errors.append(math.inf)
        else:
            errors.append(abs(float(want) - got_value))
    return errors


def check_golden(golden: GoldenVectors, predict: Predict) -> GoldenResult:
    """Run the golden inputs through ``predict`` and compare every output with its tolerance.

    ``predict`` takes the ``(rows, features)`` float32 batch and returns one flat dict per row
    (``LoadedModel.predict`` on the device). Exceptions from ``predict`` propagate.
    """
    results = predict(golden.inputs)
    every_row = list(range(golden.rows))
    if len(results) != golden.rows:
        return GoldenResult(False, golden.rows, {}, dict.fromkeys(golden.expected, every_row))
    max_abs: dict[str, float] = {}
    failures: dict[str, list[int]] = {}
    missing: list[str] = []
    for name, expected in sorted(golden.expected.items()):
        if any(name not in row for row in results):
            missing.append(name)
            failures[name] = list(range(golden.rows))
            continue
        actual = [row[name] for row in results]
        if expected.dtype.kind in "US":
            bad = [i for i, (w, g) in enumerate(zip(expected.tolist(), actual, strict=True))
                   if str(w) != str(g)]  # fmt: skip
        else:
            errors = _numeric_errors(expected, actual)
            max_abs[name] = max(errors, default=0.0)
            bad = [i for i, error in enumerate(errors) if error > golden.tolerance[name]]
        if bad:
            failures[name] = bad
    return GoldenResult(not failures, golden.rows, max_abs, failures, missing)
