"""The tolerance policy, on tensors made to disagree, and a real conversion refused for it."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from converters import ConversionError, ParityPolicy, convert
from converters.families.base import Tensors
from converters.parity import compare
from converters.report import parity_lines
from edge_agent.contracts.manifest import OutputSpec
from tests.converters.conftest import Dataset

CLASSIFIER = [
    OutputSpec(name="label", kind="label", labels=["a", "b"]),
    OutputSpec(name="probabilities", kind="probabilities", labels=["a", "b"]),
]
REGRESSOR = [OutputSpec(name="prediction", kind="regression")]


def _proba(p: list[float]) -> np.ndarray:
    return np.column_stack([1 - np.asarray(p), np.asarray(p)]).astype(np.float32)


def test_float_model_allows_no_disagreeing_row() -> None:
    expected = [np.array(["a", "b", "b", "a"]), _proba([0.1, 0.9, 0.6, 0.2])]
    actual = [np.array([b"a", b"b", b"a", b"a"]), _proba([0.1, 0.9, 0.49, 0.2])]
    result = compare(CLASSIFIER, expected, actual, policy=ParityPolicy(), tree_ensemble=False)
    report = result.report
    assert not report.passed
    assert report.disagreeing_rows == [2] and report.disagreeing_count == 1
    assert report.label_agreement == 0.75
    assert report.max_abs_error["probabilities"] == pytest.approx(0.11, abs=1e-6)
    assert result.bad_rows.tolist() == [False, False, True, False]


def test_tree_ensemble_may_flip_one_percent_of_rows_listed() -> None:
    rows = 250
    expected = [np.zeros(rows, dtype=np.int64), _proba([0.2] * rows)]
    flipped = np.zeros(rows, dtype=np.int64)
    flipped[[7, 99, 180]] = 1
    actual = [flipped, _proba([0.2] * rows)]
    report = compare(CLASSIFIER, expected, actual, policy=ParityPolicy(), tree_ensemble=True).report
    assert report.allowed_disagreeing_rows == 3  # 1 % of 250, rounded up
    assert report.passed and report.disagreeing_rows == [7, 99, 180]
    # The bundle's summary shows them rather than hiding them.
    assert "3 disagreeing rows (allowed 3): 7, 99, 180" in "\n".join(parity_lines(report))
    flipped[200] = 1
    report = compare(CLASSIFIER, expected, actual, policy=ParityPolicy(), tree_ensemble=True).report
    assert not report.passed and report.disagreeing_count == 4


def test_regression_tolerance_scales_with_the_output() -> None:
    expected = [np.array([[1000.0], [-2000.0], [5.0]])]
    close: Tensors = [np.array([[1000.1], [-2000.0], [5.0]], dtype=np.float32)]
    far: Tensors = [np.array([[1000.0], [-2000.0], [5.3]], dtype=np.float32)]
    policy = ParityPolicy()
    ok = compare(REGRESSOR, expected, close, policy=policy, tree_ensemble=False).report
    assert ok.passed and ok.tolerance["prediction"] == pytest.approx(0.2)
    bad = compare(REGRESSOR, expected, far, policy=policy, tree_ensemble=False).report
    assert not bad.passed and bad.disagreeing_rows == [2]
    assert bad.max_rel_error["prediction"] == pytest.approx(0.06, rel=1e-3)


def test_missing_values_stay_missing() -> None:
    expected = [np.array([[np.nan], [1.0]])]
    same = compare(
        REGRESSOR,
        expected,
        [np.array([[np.nan], [1.0]])],
        policy=ParityPolicy(),
        tree_ensemble=False,
    )
    assert same.report.passed
    lost = compare(
        REGRESSOR, expected, [np.array([[0.0], [1.0]])], policy=ParityPolicy(), tree_ensemble=False
    )
    assert not lost.report.passed and lost.report.disagreeing_rows == [0]


def test_a_conversion_beyond_tolerance_writes_nothing(tmp_path: Path, iris: Dataset) -> None:
    """float32 inference never matches float64 exactly: a zero tolerance must refuse the MLP."""
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(iris.x, iris.y)
    joblib.dump(model, tmp_path / "mlp.joblib")
    output = tmp_path / "mlp.bundle"
    with pytest.raises(
        ConversionError, match=r"parity check failed for onnx: \d+ of 150 reference"
    ):
        convert(
            tmp_path / "mlp.joblib",
            iris.csv(tmp_path / "reference.csv"),
            name="mlp",
            version="1",
            output=output,
            policy=ParityPolicy(tolerance=0.0),
        )
    assert not output.exists()
