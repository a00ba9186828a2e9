"""What the bundle carries besides the model: the drift baseline and the golden vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edge_agent.contracts.baseline import Baseline, bin_counts
from edge_agent.contracts.bundle import read_bundle
from edge_agent.contracts.golden import GoldenVectors, check_golden
from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with


def _convert(tmp_path: Path, model: object, data: Dataset, name: str, **options: object) -> Path:
    return convert_with(tmp_path, model, data, name, **options)[0]


def test_baseline_freezes_deciles_of_every_feature_and_output(
    tmp_path: Path, iris: Dataset
) -> None:
    features = tmp_path / "features.json"
    features.write_text(
        json.dumps([{"name": "petal_length", "unit": "cm", "valid_min": 0, "valid_max": 10}])
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(iris.x, iris.y)
    bundle = read_bundle(_convert(tmp_path, model, iris, "iris", features=features))
    assert bundle.manifest.inputs[2].unit == "cm"
    baseline = Baseline.model_validate_json(bundle.files["baseline.json"])
    assert sorted(baseline.features) == sorted(iris.names)
    assert sorted(baseline.outputs) == [
        "label",
        "probabilities_0",
        "probabilities_1",
        "probabilities_2",
    ]
    petal = baseline.features["petal_length"]
    column = iris.x[:, 2].astype(np.float64)
    assert petal.count == 150
    assert petal.mean == pytest.approx(column.mean(), rel=1e-6)
    assert petal.std == pytest.approx(column.std(), rel=1e-6)
    bounds: tuple[object, object] = (pytest.approx(column.min()), pytest.approx(column.max()))
    assert (petal.min, petal.max) == bounds
    assert (petal.valid_min, petal.valid_max) == (0, 10)
    assert len(petal.edges) <= 11 and petal.edges[0] == petal.min and petal.edges[-1] == petal.max
    assert petal.fractions[0] == 0 and petal.fractions[-1] == 0  # under- and overflow
    counts = bin_counts(petal.edges, column)
    assert petal.fractions == pytest.approx([c / 150 for c in counts])
    # Deciles: no inner bin holds much more than a tenth of the rows (ties aside).
    assert max(petal.fractions) < 0.25


def test_constant_feature_gets_a_usable_bin(tmp_path: Path, diabetes: Dataset) -> None:
    rows = diabetes.x.copy()
    rows[:, 1] = 1.0
    data = Dataset(rows, diabetes.y, diabetes.names)
    bundle = read_bundle(_convert(tmp_path, Ridge().fit(rows, diabetes.y), data, "const"))
    constant = Baseline.model_validate_json(bundle.files["baseline.json"]).features["sex"]
    assert constant.fractions == [0.0, 1.0, 0.0]
    assert bin_counts(constant.edges, [1.0, 0.5, 2.0]) == [1, 1, 1]


def test_golden_vectors_pass_on_the_device_runner(tmp_path: Path, iris: Dataset) -> None:
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.x, iris.y)
    path = _convert(tmp_path, model, iris, "forest")
    served = load_model(path)
    golden = GoldenVectors.from_bytes(served.bundle.files["golden.npz"])
    assert golden.rows == 32 and golden.feature_names == iris.names
    # Expected values are the source model's own outputs on those rows.
    assert golden.expected["label"].tolist() == model.predict(golden.inputs).tolist()
    proba = model.predict_proba(golden.inputs)
    assert np.abs(golden.expected["probabilities_2"] - proba[:, 2]).max() < 1e-12
    assert golden.tolerance["label"] == 0 and golden.tolerance["probabilities_2"] == 1e-4
    assert check_golden(golden, served.predict).passed


def test_golden_vectors_catch_another_model(tmp_path: Path, iris: Dataset) -> None:
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris.x, iris.y)
    other = LogisticRegression(max_iter=500).fit(iris.x, iris.y)
    golden = GoldenVectors.from_bytes(
        read_bundle(_convert(tmp_path, forest, iris, "forest")).files["golden.npz"]
    )
    impostor = load_model(_convert(tmp_path, other, iris, "other"))
    result = check_golden(golden, impostor.predict)
    assert not result.passed
    assert result.failures["probabilities_0"]  # rows listed
    assert "golden vectors disagree" in result.describe()
