"""scikit-learn families: convert, then serve the bundle with the agent's loader and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import LinearSVC, LinearSVR

from converters import convert
from edge_agent.contracts.bundle import read_bundle
from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with, fresh_rows

CLASSIFIERS: dict[str, Any] = {
    "logistic-pipeline": lambda: make_pipeline(
        SimpleImputer(), StandardScaler(), PCA(3), LogisticRegression(max_iter=500)
    ),
    "random-forest": lambda: RandomForestClassifier(n_estimators=15, random_state=0),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=15, random_state=0),
    "gradient-boosting": lambda: GradientBoostingClassifier(n_estimators=15, random_state=0),
    "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(max_iter=15),
    "mlp": lambda: make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    ),
}
REGRESSORS: dict[str, Any] = {
    "linear": LinearRegression,
    "linear-svr": lambda: make_pipeline(StandardScaler(), LinearSVR(random_state=0)),
    "random-forest": lambda: RandomForestRegressor(n_estimators=15, random_state=0),
    "extra-trees": lambda: ExtraTreesRegressor(n_estimators=15, random_state=0),
    "gradient-boosting": lambda: GradientBoostingRegressor(n_estimators=15, random_state=0),
    "hist-gradient-boosting": lambda: HistGradientBoostingRegressor(max_iter=15),
    "mlp": lambda: make_pipeline(
        MinMaxScaler(), MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    ),
}


def _bundle(tmp_path: Path, model: Any, data: Dataset) -> Path:
    """Through a joblib file, as a data scientist hands the model over."""
    joblib.dump(model, tmp_path / "model.joblib")
    return convert_with(tmp_path, tmp_path / "model.joblib", data)[0]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_classifier_serves_like_the_source(tmp_path: Path, iris: Dataset, family: str) -> None:
    model = CLASSIFIERS[family]().fit(iris.x, iris.y)
    served = load_model(_bundle(tmp_path, model, iris))
    manifest = served.manifest
    assert [(o.name, o.kind) for o in manifest.outputs] == [
        ("label", "label"),
        ("probabilities", "probabilities"),
    ]
    assert manifest.outputs[1].labels == ["0", "1", "2"]
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.rows == len(iris.x)
    assert manifest.parity.max_abs_error["probabilities"] <= 1e-4
    assert manifest.opset == 17 and manifest.formats == ["onnx"]
    assert manifest.feature_names == iris.names

    rows = np.vstack([iris.x, fresh_rows(iris)])
    results = served.predict(rows)
    expected_label = model.predict(rows)
    expected_proba = model.predict_proba(rows)
    assert [r["label"] for r in results] == expected_label.tolist()
    for k in range(3):
        got = np.array([r[f"probabilities_{k}"] for r in results])
        assert np.abs(got - expected_proba[:, k]).max() <= 1e-4


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("family", sorted(REGRESSORS))
def test_regressor_serves_like_the_source(tmp_path: Path, diabetes: Dataset, family: str) -> None:
    model = REGRESSORS[family]().fit(diabetes.x, diabetes.y)
    served = load_model(_bundle(tmp_path, model, diabetes))
    assert [(o.name, o.kind) for o in served.manifest.outputs] == [("prediction", "regression")]
    parity = served.manifest.parity
    assert parity is not None and parity.passed and parity.disagreeing_count == 0
    rows = np.vstack([diabetes.x, fresh_rows(diabetes)])
    got = np.array([r["prediction"] for r in served.predict(rows)])
    expected = model.predict(rows)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= 1e-4 * scale


def test_tree_policy_is_stated_in_the_certificate(tmp_path: Path, iris: Dataset) -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(iris.x, iris.y)
    parity = read_bundle(_bundle(tmp_path, model, iris)).manifest.parity
    assert parity is not None
    assert "tree ensemble" in parity.policy
    assert parity.allowed_disagreeing_rows == 2  # 1 % of 150 rows, rounded up


def test_isolation_forest_reports_label_and_anomaly_score(tmp_path: Path, iris: Dataset) -> None:
    model = IsolationForest(n_estimators=20, random_state=0).fit(iris.x)
    served = load_model(_bundle(tmp_path, model, iris))
    assert [(o.name, o.kind) for o in served.manifest.outputs] == [
        ("label", "label"),
        ("score", "anomaly_score"),
    ]
    rows = np.vstack([iris.x, fresh_rows(iris) * 3])
    results = served.predict(rows)
    assert [r["label"] for r in results] == model.predict(rows).tolist()
    scores = np.array([r["score"] for r in results])
    assert np.abs(scores - model.decision_function(rows)).max() <= 1e-4
    assert {-1, 1} <= {r["label"] for r in results}  # the far rows are anomalies


def test_linear_svm_reports_its_decision_scores(tmp_path: Path, iris: Dataset) -> None:
    model = make_pipeline(StandardScaler(), LinearSVC(random_state=0)).fit(iris.x, iris.y)
    served = load_model(_bundle(tmp_path, model, iris))
    assert [(o.name, o.kind) for o in served.manifest.outputs] == [
        ("label", "label"),
        ("decision", "regression"),
    ]
    results = served.predict(iris.x)
    assert [r["label"] for r in results] == model.predict(iris.x).tolist()
    decision = model.decision_function(iris.x)
    for k in range(3):
        got = np.array([r[f"decision_{k}"] for r in results])
        assert np.abs(got - decision[:, k]).max() <= 1e-3


def test_dataframe_pipeline_with_named_columns(tmp_path: Path, iris: Dataset) -> None:
    """A ColumnTransformer picking columns by name, and a reference file in another order."""
    import pandas as pd

    frame = pd.DataFrame(iris.x, columns=iris.names)
    frame.iloc[::7, 1] = np.nan  # an imputer has something to do
    columns = ColumnTransformer(
        [
            ("sepal", make_pipeline(SimpleImputer(), StandardScaler()), iris.names[:2]),
            ("petal", make_pipeline(StandardScaler(), PCA(1)), iris.names[2:]),
        ]
    )
    model = make_pipeline(columns, LogisticRegression(max_iter=500)).fit(frame, iris.y)
    shuffled = [iris.names[i] for i in (3, 0, 2, 1)]
    reference = tmp_path / "reference.csv"
    frame[shuffled].to_csv(reference, index=False)
    model_path = tmp_path / "model.joblib"
    joblib.dump(model, model_path)
    manifest = convert(model_path, reference, name="m", version="1", output=tmp_path / "m.bundle")
    assert manifest.feature_names == iris.names  # the model's order, not the file's
    served = load_model(tmp_path / "m.bundle")
    rows = frame.to_numpy(dtype=np.float32)
    results = served.predict(rows)
    assert [r["label"] for r in results] == model.predict(frame).tolist()
    got = np.array([[r[f"probabilities_{k}"] for k in range(3)] for r in results])
    assert np.abs(got - model.predict_proba(frame)).max() <= 1e-4


def test_string_class_labels(tmp_path: Path, iris: Dataset) -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[iris.y]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(iris.x, names)
    served = load_model(_bundle(tmp_path, model, iris))
    assert served.manifest.outputs[0].labels == ["setosa", "versicolor", "virginica"]
    results = served.predict(iris.x[:20])
    assert [r["label"] for r in results] == model.predict(iris.x[:20]).tolist()
    assert "probabilities_virginica" in results[0]
