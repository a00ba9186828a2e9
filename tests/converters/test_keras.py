"""Keras models: TFLite directly (float, float16, int8) and ONNX through tf2onnx."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters import ConversionError
from edge_agent.model import load_model
from tests.converters.conftest import Dataset, convert_with, fresh_rows
from tests.support.tools import require_module

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = require_module("keras", "convert-tf")
LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory: pytest.TempPathFactory, iris: Dataset) -> Path:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Normalization()(inputs))
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model.layers[1].adapt(iris.x)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(iris.x, iris.y, epochs=20, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "iris.keras"
    model.save(path)
    return path


def _keras_out(path: Path, rows: np.ndarray) -> np.ndarray:
    model = keras.models.load_model(path)
    return np.asarray(model(rows, training=False))


def _convert(tmp_path: Path, model: Path, data: Dataset, **options: Any) -> Path:
    return convert_with(tmp_path, model, data, **options)[0]


def test_classifier_to_both_targets(tmp_path: Path, iris: Dataset, classifier_file: Path) -> None:
    bundle = _convert(tmp_path, classifier_file, iris, target="both", labels=LABELS)
    rows = np.vstack([iris.x, fresh_rows(iris)])
    expected = _keras_out(classifier_file, rows)
    for runner in ("onnx", "tflite"):
        served = load_model(bundle, runner=runner)
        assert served.manifest.source_framework == "keras"
        assert served.manifest.parity_by_format[runner].passed
        results = served.predict(rows)
        assert [r["label"] for r in results] == expected.argmax(axis=1).tolist()
        got = np.array([[r[f"probabilities_{label}"] for label in LABELS] for r in results])
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("method", ["float16", "dynamic-int8", "static-int8"])
def test_tflite_quantization(
    tmp_path: Path, iris: Dataset, classifier_file: Path, method: str
) -> None:
    bundle = _convert(
        tmp_path, classifier_file, iris, target="tflite", quantize=method, labels=LABELS
    )
    served = load_model(bundle)
    (report,) = served.manifest.quantization_reports
    assert report.quantized_bytes < report.float_bytes
    assert report.max_abs_change["probabilities"] < 0.1
    assert report.label_agreement is not None and report.label_agreement >= 0.9
    labels = [r["label"] for r in served.predict(iris.x)]
    expected = _keras_out(classifier_file, iris.x).argmax(axis=1)
    assert np.mean(np.array(labels) == expected) >= 0.9


def test_regressor_from_h5(tmp_path: Path, diabetes: Dataset) -> None:
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(8, "relu")(inputs)))
    model.save(tmp_path / "reg.h5")
    served = load_model(_convert(tmp_path, tmp_path / "reg.h5", diabetes, target="tflite"))
    assert [(o.name, o.kind) for o in served.manifest.outputs] == [("prediction", "regression")]
    got = np.array([r["prediction"] for r in served.predict(diabetes.x)])
    assert np.abs(got - _keras_out(tmp_path / "reg.h5", diabetes.x)[:, 0]).max() <= 1e-4


def test_labels_must_match_the_output_width(
    tmp_path: Path, iris: Dataset, classifier_file: Path
) -> None:
    with pytest.raises(ConversionError, match="for 2 labels; give one label per output column"):
        _convert(tmp_path, classifier_file, iris, labels=["a", "b"])
