"""Reference rows: CSV, Parquet or ``.npy`` files whose header (or fields) names the features."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError

__all__ = ["SUFFIXES", "Reference", "read_reference"]

SUFFIXES = (".csv", ".parquet", ".pq", ".npy")
# Cells read as a missing value (NaN): imputers in a pipeline are there for them.
_MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "null", "None"})


@dataclass(frozen=True)
class Reference:
    """Reference rows as float32, one column per named feature, in the file's order."""

    features: list[str]
    rows: npt.NDArray[np.float32]
    source: str

    def __post_init__(self) -> None:
        if len(set(self.features)) != len(self.features):
            duplicated = sorted({f for f in self.features if self.features.count(f) > 1})
            raise ConversionError(f"{self.source}: feature names repeat: {', '.join(duplicated)}")

    def select(self, names: list[str]) -> Reference:
        """The same rows with the columns in the order of ``names`` (the model's order)."""
        missing = [name for name in names if name not in self.features]
        if missing:
            raise ConversionError(
                f"the model was fitted on features {', '.join(names)}; {self.source} lacks "
                f"{', '.join(missing)}"
            )
        order = [self.features.index(name) for name in names]
        return Reference(list(names), self.rows[:, order], self.source)


def read_reference(path: Path, feature_names: list[str] | None = None) -> Reference:
    """Read reference rows; ``feature_names`` names the columns of a plain 2-D ``.npy``.

    Raises ConversionError with one line saying what was expected.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConversionError(
            f"{path}: reference data must be CSV, Parquet or .npy (got {suffix or 'no suffix'})"
        )
    if not path.is_file():
        raise ConversionError(f"{path}: no such reference file")
    if path.stat().st_size == 0:
        raise ConversionError(
            f"{path} is empty: expected a header naming the features and at least one row"
        )
    if suffix == ".csv":
        reference = _read_csv(path)
    elif suffix == ".npy":
        reference = _read_npy(path, feature_names)
    else:
        reference = _read_parquet(path)
    if reference.rows.shape[0] == 0:
        raise ConversionError(f"{path}: expected at least one reference row after the header")
    return reference


def _cell(text: str) -> float:
    stripped = text.strip()
    return math.nan if stripped in _MISSING else float(stripped)


def _read_csv(path: Path) -> Reference:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConversionError(f"cannot read reference data {path}: {err}") from err
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise ConversionError(f"{path}: expected a header naming the features on line 1")
    header = [cell.strip() for cell in lines[0]]
    numeric_header = [name for name in header if _is_number(name)]
    if numeric_header and len(numeric_header) == len(header):
        raise ConversionError(
            f"{path}: line 1 holds numbers; expected a header naming the features first"
        )
    values: list[list[float]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != len(header):
            raise ConversionError(
                f"{path}:{number}: {len(line)} values for {len(header)} named features"
            )
        try:
            values.append([_cell(cell) for cell in line])
        except ValueError:
            bad = [name for name, cell in zip(header, line, strict=True) if not _is_number(cell)]
            raise ConversionError(
                f"{path}:{number}: expected numbers only; non-numeric value in column "
                f"{', '.join(bad)} (encode categories as numbers before exporting)"
            ) from None
    rows = np.asarray(values, dtype=np.float32).reshape(len(values), len(header))
    return Reference(header, rows, str(path))


def _is_number(text: str) -> bool:
    try:
        _cell(text)
    except ValueError:
        return False
    return True


def _read_parquet(path: Path) -> Reference:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ConversionError(f"cannot read reference data {path} as Parquet: {err}") from err
    bad = [
        f"{field.name} ({field.type})"
        for field in table.schema
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type))
    ]
    if bad:
        raise ConversionError(
            f"{path}: expected numeric columns only; not numeric: {', '.join(bad)}"
        )
    columns = [
        table.column(i).to_numpy(zero_copy_only=False).astype(np.float32)
        for i in range(table.num_columns)
    ]
    rows = np.column_stack(columns) if columns else np.zeros((0, 0), dtype=np.float32)
    return Reference([str(name) for name in table.column_names], rows, str(path))


def _read_npy(path: Path, feature_names: list[str] | None) -> Reference:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConversionError(
            f"cannot read reference data {path} as .npy (numbers only, no pickles): {err}"
        ) from err
    if array.dtype.names:  # a structured array: its field names are the header
        names = list(array.dtype.names)
        bad = [n for n in names if array.dtype[n].kind not in "iuf"]
        if bad:
            raise ConversionError(f"{path}: expected numeric fields only; not numeric: {bad}")
        rows = np.column_stack([array[n].astype(np.float32) for n in names]).reshape(-1, len(names))
        return Reference(names, rows, str(path))
    if array.ndim != 2:
        raise ConversionError(f"{path}: expected a 2-D array (rows, features), got {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ConversionError(f"{path}: expected numbers, got an array of {array.dtype}")
    if feature_names is None:
        raise ConversionError(
            f"{path} is a plain array without a header: save a structured array whose field "
            "names are the features, or give --feature-names"
        )
    if len(feature_names) != array.shape[1]:
        raise ConversionError(
            f"{path} has {array.shape[1]} columns for {len(feature_names)} feature names"
        )
    return Reference(list(feature_names), array.astype(np.float32), str(path))
