"""Small real datasets and reference files for the converter tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from converters import convert
from edge_agent.contracts.manifest import ModelManifest


@dataclass(frozen=True)
class Dataset:
    """Rows as float32 (what a device feeds), their targets and feature names."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.generic]
    names: list[str]

    def csv(self, path: Path, rows: npt.NDArray[np.float32] | None = None) -> Path:
        write_csv(path, self.x if rows is None else rows, self.names)
        return path


def write_csv(path: Path, rows: npt.ArrayLike, names: list[str]) -> Path:
    np.savetxt(path, rows, delimiter=",", header=",".join(names), comments="", fmt="%.9g")
    return path


@pytest.fixture(scope="session")
def iris() -> Dataset:
    from sklearn.datasets import load_iris

    data = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return Dataset(data.data.astype(np.float32), data.target, names)


@pytest.fixture(scope="session")
def diabetes() -> Dataset:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return Dataset(data.data.astype(np.float32), data.target, list(data.feature_names))


def fresh_rows(data: Dataset, count: int = 64, seed: int = 1) -> npt.NDArray[np.float32]:
    """Rows the model never saw, around the data: parity must hold beyond the reference."""
    rng = np.random.default_rng(seed)
    mean, std = data.x.mean(axis=0), data.x.std(axis=0)
    return rng.normal(mean, std, size=(count, data.x.shape[1])).astype(np.float32)


def convert_with(
    tmp_path: Path, model: object, data: Dataset, name: str = "m", **options: object
) -> tuple[Path, ModelManifest]:
    """Convert ``model`` (a file or an object) on ``data`` written as CSV; the bundle and its
    manifest."""
    output = tmp_path / f"{name}.bundle"
    manifest = convert(
        model,
        data.csv(tmp_path / f"{name}-reference.csv"),
        name=name,
        version="1",
        output=output,
        **options,  # type: ignore[arg-type]
    )
    return output, manifest
