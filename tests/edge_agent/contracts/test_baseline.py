from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contracts.baseline import Distribution, bin_counts


def test_bins_have_underflow_inner_bins_and_overflow() -> None:
    edges = [0.0, 1.0, 2.0]
    values = [-5, 0, 0.5, 1, 1.5, 2, 2.5, float("nan"), float("inf")]
    # under | [0,1) | [1,2] | over ; NaN and inf are not counted
    assert bin_counts(edges, values) == [1, 2, 3, 1]


def test_bins_match_a_hand_count_on_random_data() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=1000)
    edges = np.quantile(values[:500], np.linspace(0, 1, 11)).tolist()
    counts = bin_counts(edges, values)
    assert sum(counts) == 1000
    assert counts[0] == int(np.sum(values < edges[0]))
    assert counts[-1] == int(np.sum(values > edges[-1]))
    for i in range(1, len(edges) - 1):
        assert counts[i] == int(np.sum((values >= edges[i - 1]) & (values < edges[i])))


def test_distribution_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Distribution(edges=[1, 1], fractions=[0, 1, 0], count=1, mean=1, std=0, min=1, max=1)
    with pytest.raises(ValueError, match="need 3 fractions"):
        Distribution(edges=[0, 1], fractions=[1.0], count=1, mean=0, std=0, min=0, max=1)
