"""Merged drift summaries equal one summary over all the values."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contracts.baseline import bin_counts
from edge_agent.contracts.drift import merge_pair, merge_summaries
from edge_agent.contracts.payloads import FeatureSummary

EDGES = [-1.0, 0.0, 1.0]


def _summary(values: np.ndarray) -> FeatureSummary:
    return FeatureSummary(
        bins=bin_counts(EDGES, values),
        count=len(values),
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean()),
        m2=float(((values - values.mean()) ** 2).sum()),
    )


def test_merging_windows_equals_summarising_them_at_once() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(i, 1 + i, size=50 + 10 * i) for i in range(4)]
    merged = merge_summaries(_summary(p) for p in parts)
    assert merged is not None
    whole = _summary(np.concatenate(parts))
    assert merged.bins == whole.bins and merged.count == whole.count
    assert merged.min == whole.min and merged.max == whole.max
    assert merged.mean == pytest.approx(whole.mean)
    assert merged.m2 == pytest.approx(whole.m2)


def test_different_bins_are_refused_and_empty_windows_merge() -> None:
    one = _summary(np.array([0.5]))
    other = FeatureSummary(bins=[1, 0], count=1, mean=0.5)
    with pytest.raises(ValueError, match="different"):
        merge_pair(one, other)
    empty = FeatureSummary(bins=[0, 0, 0, 0], count=0, missing=3)
    both = merge_pair(empty, one)
    assert merge_summaries([]) is None
    assert both.count == 1 and both.missing == 3 and both.mean == 0.5


def test_a_summary_leaves_out_zero_counters_and_comes_back_whole() -> None:
    quiet = FeatureSummary(bins=[0, 3, 0], count=3, min=0.0, max=2.0, mean=1.0, m2=2.0)
    text = quiet.model_dump_json()
    assert "missing" not in text and "non_finite" not in text and "out_of_range" not in text
    assert '"min":0.0' in text  # a zero minimum is a value, not an absent one
    assert FeatureSummary.model_validate_json(text) == quiet
    troubled = FeatureSummary(bins=[1], count=0, missing=2, non_finite=1, out_of_range=4)
    text = troubled.model_dump_json()
    assert '"min"' not in text
    assert FeatureSummary.model_validate_json(text) == troubled
