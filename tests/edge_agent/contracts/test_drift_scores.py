"""Drift scores against independent computations, and the merge laws, property-tested."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from converters.baseline import distribution
from edge_agent.contracts.baseline import Distribution
from edge_agent.contracts.drift import (
    PSI_EPSILON,
    UNBOUNDED_SHIFT,
    js_distance,
    ks_statistic,
    level,
    mean_shift,
    merge_pair,
    merge_summaries,
    psi,
    score,
    summarize,
)
from edge_agent.contracts.manifest import DriftThresholds
from edge_agent.contracts.payloads import FeatureSummary


def _reference() -> Distribution:
    found = distribution(np.random.default_rng(0).normal(10.0, 2.0, 2000), valid_max=14.0)
    assert found is not None
    return found


def _bin_index(edges: list[float], value: float) -> int:
    """Which bin ``value`` falls in, written out plainly (independent of bin_counts)."""
    if value < edges[0]:
        return 0
    if value > edges[-1]:
        return len(edges)
    for i in range(1, len(edges)):
        if value < edges[i]:
            return i
    return len(edges) - 1  # equal to the last edge: the last inner bin


def test_psi_matches_the_formula_by_hand() -> None:
    counts = [0, 5, 20, 30, 45, 0]
    baseline = [0.0, 0.2, 0.2, 0.3, 0.3, 0.0]
    total = sum(counts)
    by_hand = 0.0
    for count, fraction in zip(counts, baseline, strict=True):
        q = max(count / total, PSI_EPSILON)
        p = max(fraction, PSI_EPSILON)
        by_hand += (q - p) * math.log(q / p)
    assert psi(counts, baseline) == pytest.approx(by_hand, rel=1e-12)
    assert psi([10, 20, 30], [1 / 6, 2 / 6, 3 / 6]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0, 3.0])
def test_scores_agree_with_scipy_on_the_same_binned_data(shift: float) -> None:
    reference_values = np.random.default_rng(0).normal(10.0, 2.0, 2000)
    reference = _reference()
    live = np.random.default_rng(1).normal(10.0 + shift * 2.0, 2.0, 700)
    summary = summarize(live, reference)
    scores = score(summary, reference)

    observed = np.asarray(summary.bins, dtype=float) / summary.count
    assert scores["js"] == pytest.approx(
        jensenshannon(reference.fractions, observed, base=2), abs=1e-9
    )
    ref_index = [_bin_index(reference.edges, v) for v in reference_values]
    live_index = [_bin_index(reference.edges, v) for v in live]
    assert summary.bins == np.bincount(live_index, minlength=len(reference.edges) + 1).tolist()
    assert scores["ks"] == pytest.approx(ks_2samp(ref_index, live_index).statistic, abs=1e-9)
    assert scores["mean_shift"] == pytest.approx((live.mean() - reference.mean) / reference.std)
    assert summary.out_of_range == int(np.count_nonzero(live > 14.0))
    assert (summary.min, summary.max) == (live.min(), live.max())
    assert summary.m2 == pytest.approx(((live - live.mean()) ** 2).sum())


def test_levels_follow_the_bundle_thresholds() -> None:
    thresholds = DriftThresholds(psi_warn=0.1, psi_alert=0.25)
    assert level({"psi": 0.05}, thresholds) == "ok"
    assert level({"psi": 0.1}, thresholds) == "warn"
    assert level({"psi": 0.3}, thresholds) == "alert"
    assert level({}, thresholds) == "ok"
    assert level({"psi": 0.15}, DriftThresholds(psi_warn=0.2, psi_alert=0.4)) == "ok"


def test_edge_cases_stay_finite() -> None:
    reference = _reference()
    nothing = summarize([math.nan, math.inf], reference, missing=2)
    assert (nothing.count, nothing.non_finite, nothing.missing) == (0, 2, 2)
    assert score(nothing, reference) == {}
    flat = Distribution(edges=[1.0, 1.5], fractions=[0.0, 1.0, 0.0], count=5, mean=1.0, std=0.0,
                        min=1.0, max=1.0)  # fmt: skip
    assert mean_shift(summarize([1.0], flat), flat) == 0.0
    assert mean_shift(summarize([2.0], flat), flat) == UNBOUNDED_SHIFT
    assert js_distance([0, 0, 5], [1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert ks_statistic([0, 0, 5], [1.0, 0.0, 0.0]) == pytest.approx(1.0)


values = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
    | st.sampled_from([math.nan, math.inf]),
    max_size=40,
)


def _summary(data: list[float]) -> FeatureSummary:
    return summarize(data, _reference())


def _close(a: FeatureSummary, b: FeatureSummary) -> None:
    exact = ("bins", "count", "missing", "non_finite", "out_of_range", "min", "max")
    assert {k: getattr(a, k) for k in exact} == {k: getattr(b, k) for k in exact}
    scale = max(1.0, abs(a.mean), abs(b.mean))
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9 * scale)
    assert a.m2 == pytest.approx(b.m2, rel=1e-7, abs=1e-6 * scale * scale)


@settings(max_examples=150, deadline=None)
@given(values, values)
def test_merge_is_commutative(a: list[float], b: list[float]) -> None:
    assert merge_pair(_summary(a), _summary(b)) == merge_pair(_summary(b), _summary(a))


@settings(max_examples=150, deadline=None)
@given(values, values, values)
def test_merge_is_associative_and_equals_one_summary(
    a: list[float], b: list[float], c: list[float]
) -> None:
    left = merge_pair(merge_pair(_summary(a), _summary(b)), _summary(c))
    right = merge_pair(_summary(a), merge_pair(_summary(b), _summary(c)))
    _close(left, right)
    _close(left, _summary(a + b + c))
    merged = merge_summaries([_summary(a), _summary(b), _summary(c)])
    assert merged is not None
    _close(merged, reduce(merge_pair, [_summary(a), _summary(b), _summary(c)]))
