"""Feature windows: pure logic with an injected clock, checked against windows computed here."""

from __future__ import annotations

import math
from collections import Counter
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contracts.manifest import WindowFeature
from edge_agent.errors import InputRejected
from edge_agent.sources.base import Quality, Reading, Sample
from edge_agent.windows import (
    Count,
    FeatureWindowBuilder,
    RowWindowBuilder,
    aggregate,
    features_from_names,
)


def reading(
    asset: str, *samples: tuple[str, float, float], quality: Quality = Quality.GOOD
) -> Reading:
    return Reading(
        "test", asset, "test", [Sample(tag, value, ts, quality) for tag, value, ts in samples]
    )


def feature(tag: str, aggregation: str) -> WindowFeature:
    return WindowFeature(name=f"{tag}_{aggregation}", tag=tag, aggregation=aggregation)


def test_aggregations_match_numpy() -> None:
    ts = [0.0, 0.5, 1.0, 2.5]
    values = [1.0, -2.0, 4.0, 3.0]
    points = list(zip(ts, values, strict=True))
    x = np.array(values)
    assert aggregate("last", points) == 3.0
    assert aggregate("mean", points) == pytest.approx(x.mean())
    assert aggregate("std", points) == pytest.approx(x.std())
    assert aggregate("min", points) == -2.0
    assert aggregate("max", points) == 4.0
    assert aggregate("rms", points) == pytest.approx(math.sqrt((x**2).mean()))
    assert aggregate("p2p", points) == 6.0
    assert aggregate("slope", points) == pytest.approx(np.polyfit(ts, values, 1)[0])
    assert aggregate("count", points) == 4.0
    assert aggregate("slope", [(1.0, 5.0)]) == 0.0


def test_feature_names_map_to_tag_and_aggregation() -> None:
    features = features_from_names(["vibration_rms", "bearing_temp_mean", "pressure"])
    assert [(f.tag, f.aggregation) for f in features] == [
        ("vibration", "rms"),
        ("bearing_temp", "mean"),
        ("pressure", "last"),
    ]


def test_row_builder_refuses_a_reading_without_every_feature() -> None:
    missing: Counter[str] = Counter()
    builder = RowWindowBuilder(["a", "b"], on_missing=missing.update)
    with pytest.raises(InputRejected, match="missing b"):
        builder.add(reading("p", ("a", 1.0, 0.0)), 0.0)
    assert missing == {"b": 1}
    [window] = builder.add(reading("p", ("b", 2.0, 1.0), ("a", 1.0, 1.0)), 0.0)
    assert window.values == [1.0, 2.0]


def test_tumbling_aligns_tags_at_different_rates() -> None:
    counts: Counter[str] = Counter()
    builder = FeatureWindowBuilder(
        [feature("fast", "mean"), feature("slow", "last"), feature("fast", "count")],
        mode="tumbling",
        length_s=1.0,
        allowed_lateness_s=0.0,
        on_count=lambda name, n: counts.update({name: n}),
    )
    windows = []
    for i in range(30):  # fast at 10 Hz, slow at 2 Hz, over three seconds
        t = 100.0 + i * 0.1
        samples = [("fast", float(i), t)]
        if i % 5 == 0:
            samples.append(("slow", float(i) * 10, t))
        windows += builder.add(reading("pump-1", *samples), t)
    windows += builder.poll(103.5)
    assert [w.end for w in windows] == [101.0, 102.0, 103.0]
    for k, window in enumerate(windows):
        fast = [float(i) for i in range(30) if 100 + k <= 100.0 + i * 0.1 < 101 + k]
        assert window.values == pytest.approx([np.mean(fast), fast[-1] // 5 * 5 * 10, len(fast)])
    assert counts["windows.built"] == 3


def test_sliding_windows_overlap_and_assets_are_apart() -> None:
    builder = FeatureWindowBuilder(
        [feature("v", "max")], mode="sliding", length_s=2.0, hop_s=1.0, allowed_lateness_s=0.0
    )
    windows = []
    for i in range(6):
        windows += builder.add(reading("a", ("v", float(i), 10.0 + i)), 0)
        windows += builder.add(reading("b", ("v", -float(i), 10.0 + i)), 0)
    ends = [(w.asset, w.end, w.values[0]) for w in windows]
    # Window [9, 11) is the first holding t=10; windows close when a sample reaches their end.
    assert ("a", 11.0, 0.0) in ends and ("a", 12.0, 1.0) in ends and ("a", 13.0, 2.0) in ends
    assert ("b", 13.0, -1.0) in ends
    assert len([e for e in ends if e[0] == "a"]) == len([e for e in ends if e[0] == "b"])


def test_late_samples_are_dropped_or_moved_and_counted() -> None:
    for policy, expected_count in (("drop", 1.0), ("current", 2.0)):
        counts: Counter[str] = Counter()
        builder = FeatureWindowBuilder(
            [feature("v", "count")],
            mode="tumbling",
            length_s=1.0,
            allowed_lateness_s=0.0,
            late=policy,  # type: ignore[arg-type]
            on_count=cast(Count, lambda name, n, c=counts: c.update({name: n})),
        )
        builder.add(reading("a", ("v", 1.0, 0.5)), 0)
        assert [w.values for w in builder.add(reading("a", ("v", 1.0, 1.2)), 0)] == [[1.0]]
        builder.add(reading("a", ("v", 1.0, 0.7)), 0)  # its window [0, 1) is already out
        [window] = builder.poll(10.0)
        assert window.values == [expected_count]
        assert counts["samples.late_dropped" if policy == "drop" else "samples.late_moved"] == 1


def test_out_of_order_within_lateness_is_kept_in_its_window() -> None:
    counts: Counter[str] = Counter()
    builder = FeatureWindowBuilder(
        [feature("v", "last"), feature("v", "slope")],
        mode="tumbling",
        length_s=1.0,
        allowed_lateness_s=0.5,
        on_count=lambda name, n: counts.update({name: n}),
    )
    builder.add(reading("a", ("v", 3.0, 0.3)), 0)
    builder.add(reading("a", ("v", 1.0, 0.1)), 0)
    assert builder.add(reading("a", ("v", 9.0, 1.2)), 0) == []  # inside the lateness allowance
    [window] = builder.add(reading("a", ("v", 9.0, 1.6)), 0)
    assert window.values == pytest.approx([3.0, 10.0])
    assert counts["samples.out_of_order"] == 1


def test_missing_tag_policies() -> None:
    missing: Counter[str] = Counter()

    def build(policy: str, counts: Counter[str]) -> FeatureWindowBuilder:
        missing.clear()
        return FeatureWindowBuilder(
            [feature("a", "mean"), feature("b", "mean")],
            mode="tumbling",
            length_s=1.0,
            allowed_lateness_s=0.0,
            missing=policy,  # type: ignore[arg-type]
            max_age_s=1.5,
            baseline_means={"a_mean": 0.0, "b_mean": 42.0},
            on_count=lambda name, n: counts.update({name: n}),
            on_missing=missing.update,
        )

    def feed(builder: FeatureWindowBuilder) -> list[list[float]]:
        out = builder.add(reading("x", ("a", 1.0, 0.5), ("b", 7.0, 0.5)), 0)
        out += builder.add(reading("x", ("a", 2.0, 1.5)), 0)  # b is silent from here on
        out += builder.add(reading("x", ("a", 3.0, 2.5)), 0)
        out += builder.add(reading("x", ("a", 4.0, 3.5)), 0)
        out += builder.poll(100)
        return [w.values for w in out]

    skip: Counter[str] = Counter()
    assert feed(build("skip", skip)) == [[1.0, 7.0]]
    assert skip["windows.skipped_missing.b"] == 3
    assert missing == {"b_mean": 3}  # what the drift summary of b_mean counts as missing
    last: Counter[str] = Counter()
    # b's last value (t=0.5) stands in for windows ending up to 1.5 s later, then they are skipped.
    assert feed(build("last", last)) == [[1.0, 7.0], [2.0, 7.0]]
    assert last["windows.filled_last"] == 1 and last["windows.skipped_missing.b"] == 2
    baseline: Counter[str] = Counter()
    assert feed(build("baseline", baseline)) == [[1.0, 7.0], [2.0, 42.0], [3.0, 42.0], [4.0, 42.0]]
    assert baseline["windows.filled_baseline"] == 3
    assert missing == {"b_mean": 3}  # filled windows count as missing too


def test_bad_quality_samples_never_feed_a_window() -> None:
    counts: Counter[str] = Counter()
    builder = FeatureWindowBuilder(
        [feature("v", "count")],
        mode="tumbling",
        length_s=1.0,
        allowed_lateness_s=0.0,
        use_uncertain=False,
        on_count=lambda name, n: counts.update({name: n}),
    )
    builder.add(reading("a", ("v", 1.0, 0.1)), 0)
    builder.add(reading("a", ("v", 1.0, 0.2), quality=Quality.BAD), 0)
    builder.add(reading("a", ("v", 1.0, 0.3), quality=Quality.UNCERTAIN), 0)
    [window] = builder.poll(5)
    assert window.values == [1.0]
    assert counts["samples.quality_bad"] == 1 and counts["samples.quality_uncertain"] == 1


def test_a_silent_stretch_emits_no_empty_windows() -> None:
    counts: Counter[str] = Counter()
    builder = FeatureWindowBuilder(
        [feature("v", "last")],
        mode="tumbling",
        length_s=1.0,
        allowed_lateness_s=0.0,
        on_count=lambda name, n: counts.update({name: n}),
    )
    builder.add(reading("a", ("v", 1.0, 0.5)), 0)
    windows = builder.add(reading("a", ("v", 2.0, 1000.5)), 0)
    assert [w.values for w in windows] == [[1.0]]
    assert counts["windows.empty"] == 1
    assert [w.values for w in builder.poll(2000)] == [[2.0]]


def test_count_windows_close_on_the_trigger_tag() -> None:
    builder = FeatureWindowBuilder(
        [feature("v", "mean"), feature("t", "max")], mode="count", count=3, trigger_tag="v"
    )
    windows = []
    for i in range(7):
        windows += builder.add(reading("a", ("v", float(i), float(i)), ("t", 10.0 * i, i + 0.5)), 0)
    # v samples 0,1,2 close the first window; t samples up to t=2 (0.5, 1.5) belong to it.
    assert [w.values for w in windows] == [[1.0, 10.0], [4.0, 40.0]]
    assert [w.end for w in windows] == [2.0, 5.0]


def test_snapshot_takes_the_latest_of_every_tag_within_max_age() -> None:
    counts: Counter[str] = Counter()
    builder = FeatureWindowBuilder(
        features_from_names(["speed", "temp"]),
        mode="snapshot",
        trigger_tag="speed",
        max_age_s=5.0,
        on_count=lambda name, n: counts.update({name: n}),
    )
    assert builder.add(reading("a", ("temp", 20.0, 0.0)), 0) == []
    first = reading("a", ("speed", 100.0, 1.0))
    [window] = builder.add(first, 0)
    assert window.values == [100.0, 20.0] and window.readings == [first]
    assert builder.add(reading("a", ("speed", 110.0, 9.0)), 0) == []  # temp is 9 s old
    assert counts["windows.skipped_missing.temp"] == 1


def test_snapshot_without_a_trigger_tag_fires_once_per_reading() -> None:
    builder = FeatureWindowBuilder(features_from_names(["a", "b"]), mode="snapshot")
    [window] = builder.add(reading("p", ("a", 1.0, 5.0), ("b", 2.0, 5.0)), 0)
    assert window.values == [1.0, 2.0] and window.end == 5.0


def test_invalid_setups_are_refused() -> None:
    with pytest.raises(ValueError, match="length_s"):
        FeatureWindowBuilder([feature("v", "mean")], mode="tumbling")
    with pytest.raises(ValueError, match="baseline lacks v_mean"):
        FeatureWindowBuilder(
            [feature("v", "mean")], mode="tumbling", length_s=1.0, missing="baseline"
        )
    with pytest.raises(ValueError, match="trigger_tag"):
        FeatureWindowBuilder([feature("v", "mean")], mode="snapshot", trigger_tag="x")


samples_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.floats(-1e3, 1e3, allow_nan=False),
        st.floats(0, 50, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(samples=samples_strategy, length=st.sampled_from([1.0, 2.5, 7.0]))
def test_tumbling_windows_equal_a_direct_computation(
    samples: list[tuple[str, float, float]], length: float
) -> None:
    """Fed in time order, every sample lands in exactly the window computed from scratch."""
    samples.sort(key=lambda s: s[2])
    builder = FeatureWindowBuilder(
        [feature("a", "count"), feature("b", "count"), feature("a", "mean"), feature("b", "max")],
        mode="tumbling",
        length_s=length,
        allowed_lateness_s=0.0,
        missing="baseline",
        baseline_means={"a_count": 0, "b_count": 0, "a_mean": -1.0, "b_max": -1.0},
    )
    windows = []
    for tag, value, ts in samples:
        windows += builder.add(reading("x", (tag, value, ts)), 0)
    windows += builder.poll(1e9)
    expected = {}
    for start in sorted({math.floor(ts / length) * length for _tag, _value, ts in samples}):
        a = [v for tag, v, ts in samples if tag == "a" and start <= ts < start + length]
        b = [v for tag, v, ts in samples if tag == "b" and start <= ts < start + length]
        expected[start + length] = [
            len(a),
            len(b),
            float(np.mean(a)) if a else -1.0,
            max(b) if b else -1.0,
        ]
    got = {w.end: w.values for w in windows}
    assert sorted(got) == sorted(expected)
    for end, values in expected.items():
        assert got[end] == pytest.approx(values), end


@settings(max_examples=100, deadline=None)
@given(
    samples=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "zz"]),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(-1e6, 1e6),
            st.sampled_from(list(Quality)),
        ),
        max_size=80,
    ),
    mode=st.sampled_from(["tumbling", "sliding", "count", "snapshot"]),
)
def test_any_sample_sequence_yields_finite_rows_of_the_right_width(
    samples: list[tuple[str, float, float, Quality]], mode: str
) -> None:
    builder = FeatureWindowBuilder(
        features_from_names(["a_std", "b_slope", "a_p2p"]),
        mode=mode,  # type: ignore[arg-type]
        length_s=3.0,
        hop_s=1.0,
        count=2,
        missing="last",
    )
    windows = []
    for tag, value, ts, quality in samples:
        windows += builder.add(reading("x", (tag, value, ts), quality=quality), ts)
    windows += builder.poll(2e6)
    for window in windows:
        assert len(window.values) == 3
        assert all(math.isfinite(v) for v in window.values)
