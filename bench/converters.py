"""Converted models against their source: one-row and 256-row latency, and model sizes.

Per family, the source model's own ``predict`` (scikit-learn, LightGBM, XGBoost, a PyTorch or a
Keras forward pass) is the baseline; the converted model runs on the agent's own runners
(onnxruntime, and LiteRT for networks), one thread, measured in the same run. Sizes compare each
quantized model file with the float one it came from.

The PyTorch and Keras rows need the ``convert-torch`` and ``convert-tf`` extras, the LiteRT rows
TensorFlow and LiteRT; without them those rows are left out with a note, and the rest runs.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import Figure, time_per_call
from converters import convert
from converters.reference import Reference
from edge_agent.contracts.bundle import read_bundle
from edge_agent.runners.base import ModelRunner
from edge_agent.runners.litert import LiteRtRunner
from edge_agent.runners.onnx import OnnxRunner

BENCH = "converters"
FEATURES = 16
BATCH = 256
# The optional rows: what they need imported, and the extra that installs it.
TORCH_NEEDS = ("convert-torch", ("torch", "onnx", "onnxscript"))
KERAS_NEEDS = ("convert-tf", ("tensorflow", "keras", "tf2onnx"))
LITERT_NEEDS = ("convert-tf", ("tensorflow", "ai_edge_litert"))


@dataclass
class Family:
    name: str
    model: Any  # a fitted model object, as convert() takes it
    predict: Callable[[npt.NDArray[np.float32]], object]  # the source model's own predict
    labels: list[str] | None = None
    network: bool = False  # also converted to TFLite
    quantize: tuple[str, ...] = ()  # quantizations whose sizes are reported


def _missing(needs: tuple[str, tuple[str, ...]], rows: str) -> bool:
    """True, after a note on stderr, when a module ``rows`` need is not installed."""
    extra, modules = needs
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(
            f"bench.converters: skipping the {rows} rows: {', '.join(missing)} not installed "
            f"(pip install -e '.[{extra}]')",
            file=sys.stderr,
            flush=True,
        )
    return bool(missing)


def _optional_families(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> list[Family]:
    """The PyTorch and Keras networks whose extras are installed; TFLite only with LiteRT."""
    families = []
    if not _missing(TORCH_NEEDS, "PyTorch"):
        families.append(_torch_family(x, y))
    if not _missing(KERAS_NEEDS, "Keras"):
        families.append(_keras_family(x, y))
    if families and _missing(LITERT_NEEDS, "TFLite and LiteRT"):
        for family in families:
            family.network = False  # ONNX only: the TFLite conversion needs TensorFlow
            family.quantize = tuple(m for m in family.quantize if m != "float16")
    return families


def _data(rows: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] ** 2 > 0).astype(np.int64)
    return x, y


def _sklearn_families(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> list[Family]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    models: list[tuple[str, Any, tuple[str, ...]]] = [
        ("sklearn-logistic", make_pipeline(StandardScaler(), LogisticRegression()), ()),
        ("sklearn-forest-100", RandomForestClassifier(100, max_depth=8, random_state=0), ()),
        ("sklearn-hist-gb", HistGradientBoostingClassifier(max_iter=100), ()),
        (
            "sklearn-mlp",
            make_pipeline(StandardScaler(), MLPClassifier((256, 128), max_iter=30, random_state=0)),
            ("dynamic-int8", "static-int8"),
        ),
        ("lightgbm-100", LGBMClassifier(n_estimators=100, verbose=-1), ()),
        ("xgboost-100", XGBClassifier(n_estimators=100, max_depth=6), ()),
    ]
    families = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the weights are what counts
        for name, model, quantize in models:
            model.fit(x, y)
            families.append(Family(name, model, model.predict, quantize=quantize))
    return families


def _torch_family(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Family:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 2),
        torch.nn.Softmax(dim=-1),
    ).eval()

    def predict(rows: npt.NDArray[np.float32]) -> object:
        with torch.no_grad():
            return model(torch.from_numpy(rows)).argmax(dim=1)

    quantize = ("dynamic-int8", "static-int8", "float16")
    return Family("pytorch-mlp", model, predict, ["a", "b"], network=True, quantize=quantize)


def _keras_family(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Family:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(128, activation="relu")(
        keras.layers.Dense(256, activation="relu")(inputs)
    )
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))

    def predict(rows: npt.NDArray[np.float32]) -> object:
        return np.asarray(model(rows, training=False)).argmax(axis=1)

    quantize = ("dynamic-int8", "static-int8", "float16")
    return Family("keras-mlp", model, predict, ["a", "b"], network=True, quantize=quantize)


def _convert(family: Family, reference: Reference, out: Path, **options: Any) -> dict[str, bytes]:
    path = out / f"{family.name}-{options.get('quantize', 'none')}.bundle"
    convert(family.model, reference, name="bench", version="1", output=path,
            labels=family.labels, **options)  # fmt: skip
    return read_bundle(path).files


def _latency(call: Callable[[], object], quick: bool) -> float:
    return time_per_call(call, min_time=0.2 if quick else 1.0, repeat=3 if quick else 5) * 1e6


def _latency_figures(
    family: Family, runtime: str, runner: ModelRunner, x: npt.NDArray[np.float32], quick: bool
) -> list[Figure]:
    figures = []
    for rows in (1, BATCH):
        batch = np.ascontiguousarray(x[:rows])
        source = _latency(partial(family.predict, batch), quick)
        converted = _latency(partial(runner.predict, batch), quick)
        figures.append(
            Figure(
                bench=BENCH,
                name=f"{family.name} {rows}-row {runtime}",
                value=converted,
                unit="us",
                baseline_name=f"{family.name.split('-')[0]} predict",
                baseline=source,
                target="< source predict",
                met=converted < source,
            )
        )
    return figures


def _size_figure(family: Family, label: str, size: int, float_size: int) -> Figure:
    return Figure(
        bench=BENCH,
        name=f"{family.name} {label} size",
        value=size / 1000,
        unit="kB",
        baseline_name="float model",
        baseline=float_size / 1000,
        target="< float model",
        met=size < float_size,
    )


def _size_figures(
    family: Family, reference: Reference, out: Path, float_files: dict[str, bytes]
) -> list[Figure]:
    """Each quantization of the ONNX model (float16: of the TFLite one), and of the TFLite
    model too for networks."""
    figures = []
    for method in family.quantize:
        targets = ["tflite"] if method == "float16" else ["onnx"]
        if family.network and method != "float16":
            targets.append("tflite")
        for target in targets:
            files = _convert(family, reference, out, target=target, quantize=method)
            name = f"model.{target}"
            figures.append(
                _size_figure(family, f"{target} {method}", len(files[name]), len(float_files[name]))
            )
    return figures


def run(quick: bool) -> list[Figure]:
    x, y = _data(2000)
    reference = Reference([f"f{i:02d}" for i in range(FEATURES)], x[:500], "bench")
    families = [*_sklearn_families(x, y), *_optional_families(x, y)]
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-converters-") as tmp:
        out = Path(tmp)
        for family in families:
            target = "both" if family.network else "onnx"
            files = _convert(family, reference, out, target=target)
            figures += _latency_figures(
                family, "onnxruntime", OnnxRunner(files["model.onnx"]), x, quick
            )
            if family.network:
                runner = LiteRtRunner(files["model.tflite"])
                figures += _latency_figures(family, "LiteRT", runner, x, quick)
            figures += _size_figures(family, reference, out, files)
    return figures
