"""The drift monitor over a stream whose distribution shifts halfway, with time injected."""

from __future__ import annotations

import datetime as dt

import numpy as np

from converters.baseline import build_baseline
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec
from edge_agent.drift import DriftMonitor
from tests.support.models import FEATURES

CENTER = np.array([70.0, 0.3, 5.0])
SPREAD = np.array([5.0, 0.1, 1.0])
WINDOW_S = 300.0
PER_WINDOW = 300  # one reading a second


def _monitor() -> DriftMonitor:
    rng = np.random.default_rng(0)
    reference = rng.normal(CENTER, SPREAD, size=(5000, 3)).astype(np.float32)
    specs = [FeatureSpec(name=name) for name in FEATURES]
    baseline = build_baseline(specs, reference, {"score": reference[:, 2].astype(np.float64)})
    manifest = ModelManifest(
        name="linear",
        version="1",
        created=dt.datetime.now(dt.UTC).isoformat(),
        source_framework="onnx",
        converter_version="test",
        formats=["onnx"],
        inputs=specs,
        outputs=[OutputSpec(name="score", kind="regression")],
        files={"model.onnx": "0" * 64},
    )
    return DriftMonitor(manifest, baseline, window_s=WINDOW_S, min_count=200, start=0.0)


def test_a_shift_halfway_alerts_within_two_windows_and_never_before() -> None:
    monitor = _monitor()
    rng = np.random.default_rng(42)
    windows = 20
    shift_at = 10
    levels = []
    for window in range(windows):
        now = window * WINDOW_S
        # Vibration (a bearing wearing) moves by one standard deviation from window 10 on.
        center = CENTER + (np.array([0.0, 0.1, 0.0]) if window >= shift_at else 0.0)
        for second in range(PER_WINDOW):  # small batches, as the agent feeds them
            rows = rng.normal(center, SPREAD, size=(1, 3)).astype(np.float32)
            monitor.update(rows, [{"score": float(rows[0, 2]), "label": "ok"}])
            assert not monitor.due(now + second)
        assert monitor.due(now + WINDOW_S)
        report = monitor.summary(now + WINDOW_S)
        assert (report.window_start, report.window_end) == (now, now + WINDOW_S)
        assert report.features["vibration"].count == PER_WINDOW
        assert set(report.outputs) == {"score"}  # text outputs have no distribution
        levels.append(report.levels)
    stationary = levels[:shift_at]
    assert all(lv.get("vibration") != "alert" for lv in stationary)
    assert all("alert" not in lv.values() for lv in stationary)
    first_alert = next(i for i, lv in enumerate(levels) if lv.get("vibration") == "alert")
    assert shift_at <= first_alert < shift_at + 2
    # Features that did not move do not alert after the shift either.
    assert all(lv.get("temperature") != "alert" for lv in levels)


def test_few_values_are_summarized_but_not_leveled() -> None:
    monitor = _monitor()
    rows = np.random.default_rng(1).normal(CENTER + 10 * SPREAD, SPREAD, size=(50, 3))
    monitor.update(rows.astype(np.float32), [{"score": 1.0}] * 50)
    report = monitor.summary(WINDOW_S)
    assert report.features["temperature"].count == 50
    assert report.scores["temperature"]["psi"] > 1  # scored ...
    assert report.levels == {}  # ... but too few values to raise an alarm
    empty = monitor.summary(2 * WINDOW_S)
    assert empty.features["temperature"].count == 0 and empty.scores == {}


def test_values_the_data_path_lacked_are_counted_as_missing_in_their_window() -> None:
    monitor = _monitor()
    rows = np.random.default_rng(2).normal(CENTER, SPREAD, size=(10, 3)).astype(np.float32)
    monitor.update(rows, [{"score": 1.0}] * 10)
    monitor.missing(["vibration"])
    monitor.missing(["vibration", "pressure", "not-a-feature"])
    report = monitor.summary(WINDOW_S)
    assert report.features["vibration"].missing == 2 and report.features["vibration"].count == 10
    assert report.features["pressure"].missing == 1
    assert report.features["temperature"].missing == 0
    assert monitor.summary(2 * WINDOW_S).features["vibration"].missing == 0  # a new window
