"""Drift summaries: how a window of values is summarized, merged and scored against a baseline.

The agent summarizes each window with :func:`summarize`; the fleet adds summaries from many
windows and devices with :func:`merge_summaries` (two at a time: :func:`merge_pair`) and
scores the result with :func:`score`.
Counts (bins, count, missing, non-finite, out of range) and min/max merge exactly; mean and M2
combine with Chan's parallel formula, exact up to floating-point rounding (relative error around
1e-15). Merging is commutative (bit for bit) and associative (up to that rounding), so the
order summaries arrive in does not matter.

Scores are effect sizes, never p-values (sensor data is autocorrelated, so a test's p-value
shrinks with the sample size whatever the effect):

- PSI, natural log: ``sum((q - p) * ln(q / p))`` over the bins (underflow and overflow included),
  where ``p`` are the baseline fractions and ``q`` the observed fractions, each clipped below at
  :data:`PSI_EPSILON` so that an empty bin stays finite.
- Jensen-Shannon distance, base 2: the square root of the JS divergence of ``p`` and ``q``; in
  [0, 1].
- KS: the largest gap between the two binned cumulative distributions.
- Mean shift: ``(mean - baseline mean) / baseline std`` (0 when the baseline std is 0 and the
  means agree, :data:`UNBOUNDED_SHIFT` with the shift's sign when they differ: JSON has no
  infinity).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.baseline import Distribution, bin_counts
from edge_agent.contracts.manifest import DriftThresholds
from edge_agent.contracts.payloads import FeatureSummary

__all__ = [
    "PSI_EPSILON",
    "UNBOUNDED_SHIFT",
    "Level",
    "empty_summary",
    "js_distance",
    "ks_statistic",
    "level",
    "mean_shift",
    "merge_feature_maps",
    "merge_pair",
    "merge_summaries",
    "psi",
    "score",
    "summarize",
]

PSI_EPSILON = 1e-4
UNBOUNDED_SHIFT = 1e9

Level = Literal["ok", "warn", "alert"]


def empty_summary(distribution: Distribution | None) -> FeatureSummary:
    """The summary of no values, binned like ``distribution`` (no bins without one)."""
    bins = [0] * (len(distribution.edges) + 1) if distribution is not None else []
    return FeatureSummary(bins=bins, count=0)


def summarize(
    values: npt.ArrayLike, distribution: Distribution | None, *, missing: int = 0
) -> FeatureSummary:
    """Summarize ``values`` on the baseline's frozen edges (no bins without a baseline).

    Non-finite values are counted and left out of everything else; finite values outside the
    baseline's valid range are counted in ``out_of_range`` and still binned.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    finite_mask = np.isfinite(data)
    finite = data[finite_mask]
    non_finite = int(data.size - finite.size)
    bins = bin_counts(distribution.edges, finite) if distribution is not None else []
    out_of_range = 0
    if distribution is not None:
        if distribution.valid_min is not None:
            out_of_range += int(np.count_nonzero(finite < distribution.valid_min))
        if distribution.valid_max is not None:
            out_of_range += int(np.count_nonzero(finite > distribution.valid_max))
    if finite.size == 0:
        return FeatureSummary(
            bins=bins, count=0, missing=missing, non_finite=non_finite, out_of_range=0
        )
    mean = float(finite.mean())
    return FeatureSummary(
        bins=bins,
        count=int(finite.size),
        missing=missing,
        non_finite=non_finite,
        out_of_range=out_of_range,
        min=float(finite.min()),
        max=float(finite.max()),
        mean=mean,
        m2=float(np.square(finite - mean).sum()),
    )


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def merge_pair(a: FeatureSummary, b: FeatureSummary) -> FeatureSummary:
    """The summary of the union of two windows' values (commutative and associative).

    Raises ValueError when the two were binned on different edges (different bin counts).
    """
    if len(a.bins) != len(b.bins):
        raise ValueError(
            f"cannot merge summaries binned differently ({len(a.bins)} and {len(b.bins)} bins): "
            "they come from different baselines"
        )
    count = a.count + b.count
    if count == 0:
        mean, m2 = 0.0, 0.0
    elif a.count == 0:
        mean, m2 = b.mean, b.m2
    elif b.count == 0:
        mean, m2 = a.mean, a.m2
    else:
        # Chan et al.: weighting by the counts symmetrically keeps the merge commutative.
        mean = (a.mean * a.count + b.mean * b.count) / count
        delta = b.mean - a.mean
        m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count) / count
    return FeatureSummary(
        bins=[x + y for x, y in zip(a.bins, b.bins, strict=True)],
        count=count,
        missing=a.missing + b.missing,
        non_finite=a.non_finite + b.non_finite,
        out_of_range=a.out_of_range + b.out_of_range,
        min=_min(a.min, b.min),
        max=_max(a.max, b.max),
        mean=mean,
        m2=m2,
    )


def merge_summaries(summaries: Iterable[FeatureSummary]) -> FeatureSummary | None:
    """One summary equal to having seen every value of ``summaries``; None when there are none.

    Raises ValueError when two summaries have different numbers of bins.
    """
    merged: FeatureSummary | None = None
    for summary in summaries:
        merged = summary if merged is None else merge_pair(merged, summary)
    return merged


def merge_feature_maps(
    a: Mapping[str, FeatureSummary], b: Mapping[str, FeatureSummary]
) -> dict[str, FeatureSummary]:
    """Merge two ``name -> summary`` maps (a name present on one side only is kept as it is)."""
    merged = dict(a)
    for name, summary in b.items():
        merged[name] = merge_pair(merged[name], summary) if name in merged else summary
    return merged


def _fractions(counts: list[int]) -> npt.NDArray[np.float64]:
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    return array / total if total > 0 else array


def psi(counts: list[int], baseline: list[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of observed bin ``counts`` against baseline fractions."""
    q = np.clip(_fractions(counts), epsilon, None)
    p = np.clip(np.asarray(baseline, dtype=np.float64), epsilon, None)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(counts: list[int], baseline: list[float]) -> float:
    """Jensen-Shannon distance (base 2) between observed counts and baseline fractions."""
    q = _fractions(counts)
    p = np.asarray(baseline, dtype=np.float64)
    m = (p + q) / 2

    def kl(x: npt.NDArray[np.float64]) -> float:
        used = x > 0
        return float(np.sum(x[used] * np.log2(x[used] / m[used])))

    divergence = max(0.0, (kl(p) + kl(q)) / 2)
    return math.sqrt(divergence)


def ks_statistic(counts: list[int], baseline: list[float]) -> float:
    """The largest gap between the binned cumulative distributions."""
    q = np.cumsum(_fractions(counts))
    p = np.cumsum(np.asarray(baseline, dtype=np.float64))
    return float(np.max(np.abs(q - p)))


def mean_shift(summary: FeatureSummary, distribution: Distribution) -> float:
    """How far the window's mean moved, in baseline standard deviations (signed)."""
    shift = summary.mean - distribution.mean
    if distribution.std > 0:
        return shift / distribution.std
    return 0.0 if shift == 0 else math.copysign(UNBOUNDED_SHIFT, shift)


def score(summary: FeatureSummary, distribution: Distribution) -> dict[str, float]:
    """Every score of one summary against its baseline; empty when it has no finite value."""
    if summary.count == 0 or len(summary.bins) != len(distribution.fractions):
        return {}
    return {
        "psi": psi(summary.bins, distribution.fractions),
        "js": js_distance(summary.bins, distribution.fractions),
        "ks": ks_statistic(summary.bins, distribution.fractions),
        "mean_shift": mean_shift(summary, distribution),
    }


def level(scores: Mapping[str, float], thresholds: DriftThresholds) -> Level:
    """The alert level the PSI reaches (ok without a PSI)."""
    value = scores.get("psi")
    if value is None:
        return "ok"
    if value >= thresholds.psi_alert:
        return "alert"
    if value >= thresholds.psi_warn:
        return "warn"
    return "ok"
