"""LightGBM and XGBoost, alone and at the end of a scikit-learn pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier, XGBRegressor

from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with, fresh_rows

MODELS: dict[str, Any] = {
    "lightgbm": lambda: LGBMClassifier(n_estimators=20, verbose=-1),
    "xgboost": lambda: XGBClassifier(n_estimators=20),
    "lightgbm-pipeline": lambda: make_pipeline(
        StandardScaler(), LGBMClassifier(n_estimators=20, verbose=-1)
    ),
}


def _serve(tmp_path: Path, model: Any, data: Dataset) -> Any:
    joblib.dump(model, tmp_path / "model.joblib")
    bundle, _ = convert_with(tmp_path, tmp_path / "model.joblib", data)
    return load_model(bundle)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_classifier(tmp_path: Path, iris: Dataset, family: str) -> None:
    model = MODELS[family]().fit(iris.x, iris.y)
    served = _serve(tmp_path, model, iris)
    framework = "xgboost" if family == "xgboost" else "lightgbm"
    assert served.manifest.source_framework == framework
    assert framework in served.manifest.framework_versions
    assert "onnxmltools" in served.manifest.framework_versions
    rows = np.vstack([iris.x, fresh_rows(iris)])
    results = served.predict(rows)
    assert [r["label"] for r in results] == model.predict(rows).tolist()
    got = np.array([[r[f"probabilities_{k}"] for k in range(3)] for r in results])
    assert np.abs(got - model.predict_proba(rows)).max() <= 1e-4


@pytest.mark.parametrize(
    "make",
    [lambda: LGBMRegressor(n_estimators=20, verbose=-1), lambda: XGBRegressor(n_estimators=20)],
    ids=["lightgbm", "xgboost"],
)
def test_regressor(tmp_path: Path, diabetes: Dataset, make: Any) -> None:
    model = make().fit(diabetes.x, diabetes.y)
    served = _serve(tmp_path, model, diabetes)
    parity = served.manifest.parity
    assert parity is not None and parity.passed and "tree ensemble" in parity.policy
    rows = np.vstack([diabetes.x, fresh_rows(diabetes)])
    got = np.array([r["prediction"] for r in served.predict(rows)])
    assert np.abs(got - model.predict(rows)).max() <= 1e-4 * np.abs(diabetes.y).max()
