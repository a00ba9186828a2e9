"""The golden-vector format and the one comparison the device runs before activating a model."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.contracts.golden import GoldenError, GoldenVectors, check_golden
from edge_agent.contracts.payloads import OutputValue


def _golden() -> GoldenVectors:
    inputs = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    return GoldenVectors(
        inputs=inputs,
        feature_names=["a", "b"],
        expected={
            "label": np.array(["low", "high", "high"]),
            "score": np.array([3.0, 7.0, 11.0]),
        },
        tolerance={"label": 0.0, "score": 0.01},
    )


def _model(offset: float = 0.0, flip_row: int | None = None):  # type: ignore[no-untyped-def]
    def predict(rows: npt.NDArray[np.float32]) -> Sequence[Mapping[str, OutputValue]]:
        results: list[dict[str, OutputValue]] = []
        for i, row in enumerate(rows):
            score = float(row.sum()) + offset
            label = "high" if score > 5 else "low"
            if i == flip_row:
                label = "low" if label == "high" else "high"
            results.append({"label": label, "score": score})
        return results

    return predict


def test_round_trip_without_pickles() -> None:
    data = _golden().to_bytes()
    back = GoldenVectors.from_bytes(data)
    assert back.feature_names == ["a", "b"] and back.rows == 3
    assert back.expected["label"].tolist() == ["low", "high", "high"]
    assert back.tolerance == {"label": 0.0, "score": 0.01}
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)


def test_a_faithful_model_passes() -> None:
    result = check_golden(_golden(), _model(offset=0.005))
    assert result.passed and result.disagreeing_rows == []
    assert result.max_abs_error["score"] == pytest.approx(0.005, abs=1e-6)
    assert result.describe() == "golden vectors: all 3 rows agree"


def test_drifting_scores_and_flipped_labels_fail_with_rows() -> None:
    result = check_golden(_golden(), _model(offset=0.5, flip_row=1))
    assert not result.passed
    assert result.failures == {"label": [1], "score": [0, 1, 2]}
    assert result.disagreeing_rows == [0, 1, 2]
    assert "score off on rows 0, 1, 2, max error 0.5" in result.describe()


def test_a_missing_output_is_named() -> None:
    def predict(rows: npt.NDArray[np.float32]) -> Sequence[Mapping[str, OutputValue]]:
        return [{"label": "low"} for _ in rows]

    result = check_golden(_golden(), predict)
    assert not result.passed and result.missing == ["score"]
    assert "missing output score" in result.describe()


def test_nan_expected_matches_nan_only() -> None:
    golden = GoldenVectors(
        inputs=np.zeros((2, 1), dtype=np.float32),
        feature_names=["x"],
        expected={"y": np.array([np.nan, 1.0])},
        tolerance={"y": 0.1},
    )
    values = iter([[{"y": float("nan")}, {"y": 1.0}], [{"y": 0.0}, {"y": 1.0}]])
    assert check_golden(golden, lambda rows: next(values)).passed
    assert check_golden(golden, lambda rows: next(values)).failures == {"y": [0]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable .npz"),
        (b"", "not a readable .npz"),
    ],
)
def test_unreadable_files(data: bytes, message: str) -> None:
    with pytest.raises(GoldenError, match=message):
        GoldenVectors.from_bytes(data)


def test_inconsistent_files_are_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, schema_version=np.asarray(1), inputs=np.zeros((2, 1)))
    with pytest.raises(GoldenError, match="lacks feature_names, output_names, tolerances"):
        GoldenVectors.from_bytes(buffer.getvalue())
    with pytest.raises(GoldenError, match="shape"):
        GoldenVectors(np.zeros((2, 2), np.float32), ["a"], {}, {})
    with pytest.raises(GoldenError, match="needs a tolerance"):
        GoldenVectors(np.zeros((2, 1), np.float32), ["a"], {"y": np.zeros(2)}, {})
