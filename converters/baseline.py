"""The drift baseline: frozen quantile bins and moments of every input feature and output."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.baseline import Baseline, Distribution, bin_counts
from edge_agent.contracts.manifest import FeatureSpec

__all__ = ["DEFAULT_QUANTILES", "build_baseline", "distribution"]

# Deciles: edges at the 0th, 10th ... 100th percentile, ten bins plus underflow and overflow.
DEFAULT_QUANTILES = 10


def _edges(values: npt.NDArray[np.float64], quantiles: int) -> list[float]:
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, quantiles + 1)))
    if len(edges) == 1:
        # A constant: one inner bin holding exactly that value, everything else drifts out.
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    return [float(edge) for edge in edges]


def distribution(
    values: npt.ArrayLike,
    *,
    quantiles: int = DEFAULT_QUANTILES,
    valid_min: float | None = None,
    valid_max: float | None = None,
) -> Distribution | None:
    """The reference distribution of the finite ``values``; None when there is none."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        return None
    edges = _edges(data, quantiles)
    counts = np.asarray(bin_counts(edges, data), dtype=np.float64)
    return Distribution(
        edges=edges,
        fractions=(counts / counts.sum()).tolist(),
        count=int(data.size),
        mean=float(data.mean()),
        std=float(data.std()),
        min=float(data.min()),
        max=float(data.max()),
        valid_min=valid_min,
        valid_max=valid_max,
    )


def build_baseline(
    features: list[FeatureSpec],
    rows: npt.NDArray[np.float32],
    outputs: Mapping[str, npt.NDArray[np.generic]],
    *,
    quantiles: int = DEFAULT_QUANTILES,
) -> Baseline:
    """Distributions of each feature (column of ``rows``) and each numeric flattened output.

    Text outputs (string class labels) have no quantiles and are left out; so is a feature or
    output with no finite value at all.
    """
    feature_distributions = {}
    for index, spec in enumerate(features):
        found = distribution(
            rows[:, index], quantiles=quantiles, valid_min=spec.valid_min, valid_max=spec.valid_max
        )
        if found is not None:
            feature_distributions[spec.name] = found
    output_distributions = {}
    for name, values in outputs.items():
        if values.dtype.kind not in "biuf":
            continue
        found = distribution(values, quantiles=quantiles)
        if found is not None:
            output_distributions[name] = found
    return Baseline(features=feature_distributions, outputs=output_distributions)
