"""Merging drift summaries: windows and devices add up exactly, so the fleet sees one picture.

Bins and counts add; min and max take the extremes; mean and M2 combine with Chan's parallel
formula. Merging is associative and commutative, so the order summaries arrive in does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.contracts.payloads import FeatureSummary

__all__ = ["merge_summaries"]


def _pair(a: FeatureSummary, b: FeatureSummary) -> FeatureSummary:
    if len(a.bins) != len(b.bins):
        raise ValueError(
            f"cannot merge summaries binned differently ({len(a.bins)} and {len(b.bins)} bins): "
            "they come from different baselines"
        )
    count = a.count + b.count
    if count == 0:
        mean, m2 = 0.0, 0.0
    else:
        delta = b.mean - a.mean
        mean = a.mean + delta * b.count / count
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
        merged = summary if merged is None else _pair(merged, summary)
    return merged
