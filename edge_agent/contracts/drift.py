"""Merging drift summaries: windows and devices add up exactly, so the fleet sees one picture.

Bins and counts add; min and max take the extremes; mean and M2 combine with Chan's parallel
formula. Merging is commutative and associative, so the order summaries arrive in does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.contracts.payloads import FeatureSummary

__all__ = ["merge_pair", "merge_summaries"]


def merge_pair(a: FeatureSummary, b: FeatureSummary) -> FeatureSummary:
    """The summary of the union of two windows' values.

    Raises ValueError when the two were binned on different edges (different bin counts).
    """
    if len(a.bins) != len(b.bins):
        raise ValueError(
            f"summaries with {len(a.bins)} and {len(b.bins)} bins were binned on different "
            "baselines and cannot be merged"
        )
    count = a.count + b.count
    if count == 0:
        mean, m2 = 0.0, 0.0
    else:
        mean = (a.mean * a.count + b.mean * b.count) / count
        delta = b.mean - a.mean
        m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / count
    lows = [v for v in (a.min, b.min) if v is not None]
    highs = [v for v in (a.max, b.max) if v is not None]
    return FeatureSummary(
        bins=[x + y for x, y in zip(a.bins, b.bins, strict=True)],
        count=count,
        missing=a.missing + b.missing,
        non_finite=a.non_finite + b.non_finite,
        out_of_range=a.out_of_range + b.out_of_range,
        min=min(lows) if lows else None,
        max=max(highs) if highs else None,
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
