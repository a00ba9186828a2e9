"""The drift baseline (``baseline.json``): reference distributions with frozen quantile bins.

The converter computes it from reference rows when it packs a bundle; the agent bins live values
on the same edges (:func:`bin_counts`) so that drift summaries from any device compare and merge.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.contracts.manifest import supported_file_version

__all__ = ["Baseline", "Distribution", "bin_counts"]


def bin_counts(edges: list[float], values: npt.ArrayLike) -> list[int]:
    """Count finite ``values`` in the bins the ``edges`` define, ``len(edges) + 1`` counts in all.

    Bin 0 is the underflow (below ``edges[0]``); bin i (1 <= i < len(edges)) holds
    ``edges[i-1] <= x < edges[i]``, the last of them also ``x == edges[-1]``; the final bin is the
    overflow (above ``edges[-1]``). Non-finite values are not counted here: callers count them.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    bounds = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(bounds, data, side="right")
    # A value equal to the last edge belongs to the last inner bin, not to the overflow.
    index[data == bounds[-1]] = len(bounds) - 1
    counts: list[int] = np.bincount(index, minlength=len(bounds) + 1).astype(int).tolist()
    return counts


class Distribution(BaseModel):
    """The reference distribution of one feature or output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: list[float] = Field(min_length=1)  # strictly increasing quantile edges
    fractions: list[float]  # len(edges) + 1, as bin_counts bins, summing to 1
    count: int = Field(ge=1)
    mean: float
    std: float = Field(ge=0)
    min: float
    max: float
    valid_min: float | None = None
    valid_max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} fractions")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError("fractions must sum to 1")
        return self


class Baseline(BaseModel):
    """Reference distributions of every input feature and every (flattened) output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    features: dict[str, Distribution]
    outputs: dict[str, Distribution] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _readable_layout(cls, value: int) -> int:
        return supported_file_version("baseline", value)
