"""The grace period's gates as pure logic: errors, latency against the previous model, outputs."""

from __future__ import annotations

import numpy as np

from converters.baseline import distribution
from edge_agent.contracts.baseline import Baseline
from edge_agent.contracts.payloads import OutputValue
from edge_agent.lifecycle.grace import Grace, GraceGates
from edge_agent.lifecycle.shadow import agreeing_rows

GATES = GraceGates(
    max_error_rate=0.05,
    min_windows=20,
    output_min_windows=200,
    latency_p99_ratio=3.0,
    latency_floor_ms=2.0,
    output_psi_alert=0.25,
)


def _baseline() -> Baseline:
    scores = distribution(np.random.default_rng(0).normal(0.0, 1.0, 5000))
    features = distribution([1.0, 2.0])
    assert scores is not None and features is not None
    return Baseline(features={"x": features}, outputs={"score": scores})


def _rows(values: np.ndarray) -> list[dict[str, float | int | str]]:
    return [{"score": float(v), "label": "ok"} for v in values]


def test_errors_above_the_rate_fail_and_below_it_pass() -> None:
    grace = Grace(GATES, None, previous_p99_ms=None)
    assert grace.answered(_rows(np.zeros(100)), 0.001) is None
    assert grace.failed(5) is None  # 5 of 105: under 5 %
    assert grace.failed(1) is not None  # 6 of 106: over
    assert grace.failure is not None and "6 of 106" in grace.failure


def test_latency_fails_only_past_the_ratio_and_the_floor() -> None:
    # 0.1 ms before, 1 ms now: ten times slower, but under the 2 ms floor.
    fast = Grace(GATES, None, previous_p99_ms=0.1)
    for _ in range(50):
        assert fast.answered(_rows(np.zeros(1)), 0.001) is None
    assert fast.finish() is None
    # 1 ms before, 10 ms now: judged once min_windows windows were answered.
    slow = Grace(GATES, None, previous_p99_ms=1.0)
    for window in range(1, 30):
        failure = slow.answered(_rows(np.zeros(1)), 0.010)
        assert (failure is None) == (window < GATES.min_windows)
    assert slow.failure is not None and "latency p99" in slow.failure
    # Without a previous measurement there is nothing to compare with.
    unknown = Grace(GATES, None, previous_p99_ms=None)
    for _ in range(50):
        unknown.answered(_rows(np.zeros(1)), 1.0)
    assert unknown.finish() is None


def test_outputs_are_judged_against_the_baseline_after_enough_windows() -> None:
    rng = np.random.default_rng(1)
    healthy = Grace(GATES, _baseline(), previous_p99_ms=None)
    for _ in range(100):
        assert healthy.answered(_rows(rng.normal(0.0, 1.0, 5)), 0.001) is None
    assert healthy.finish() is None

    shifted = Grace(GATES, _baseline(), previous_p99_ms=None)
    for batch in range(100):
        failure = shifted.answered(_rows(rng.normal(3.0, 1.0, 5)), 0.001)
        if (batch + 1) * 5 < GATES.output_min_windows:
            assert failure is None  # too few values to judge
    assert shifted.failure is not None and "output score is out of distribution" in shifted.failure
    # Too few windows in the whole grace period: the output gate does not judge.
    short = Grace(GATES, _baseline(), previous_p99_ms=None)
    short.answered(_rows(rng.normal(3.0, 1.0, 50)), 0.001)
    assert short.finish() is None


def test_shadow_agreement_counts_rows_that_agree_on_every_shared_output() -> None:
    serving: list[dict[str, OutputValue]] = [
        {"score": 1.0, "label": "a"},
        {"score": 2.0, "label": "b"},
        {"score": 3.0},
    ]
    candidate: list[dict[str, OutputValue]] = [
        {"score": 1.0005, "label": "a"},
        {"score": 2.0, "label": "c"},
        {"other": 3.0},
    ]
    assert agreeing_rows(serving, candidate, {"score": 1e-3}) == 1
    assert agreeing_rows(serving, candidate, {"score": 1e-4}) == 0
