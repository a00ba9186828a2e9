"""scikit-learn estimators and pipelines (and LightGBM/XGBoost inside them), through skl2onnx.

Outputs: a classifier gives ``label`` and ``probabilities`` (a linear SVM, which has no
probabilities, gives ``label`` and its ``decision`` scores), a regressor gives ``prediction``, an
outlier detector (IsolationForest) gives ``label`` (1 normal, -1 anomaly) and ``score`` (its
decision function: the lower, the more anomalous).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from converters.errors import ConversionError
from converters.families import gradient_boosting
from converters.families.base import SourceModel, Tensors
from converters.targets.onnx import ML_OPSET, OPSET
from edge_agent.contracts.manifest import OutputSpec

__all__ = ["SklearnModel"]

_TREE_WORDS = ("Tree", "Forest", "Boost", "LGBM", "XGB")


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def _describe(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"{type(estimator).__name__}({', '.join(_describe(s) for _, s in steps)})"
    return type(estimator).__name__


def _patch_skl2onnx() -> None:
    """Two fixes to skl2onnx 1.20's histogram gradient boosting trees, applied once.

    It hands a Python bool to an integer node attribute, which protobuf 6 and later refuse: cast
    it. And it stores each split threshold rounded to float32 where scikit-learn compares against
    the float64 threshold, so a float32 input between the two takes the other branch: ask for the
    float32 threshold that splits float32 inputs exactly as scikit-learn does, as skl2onnx already
    does for its other trees.
    """
    from skl2onnx.common import tree_ensemble
    from skl2onnx.operator_converters import random_forest

    original_node = tree_ensemble.add_node
    if getattr(original_node, "_edge_convert_patched", False):
        return

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original_node(
            *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
        )

    original_tree = random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting
    adjust_position = 7  # attr_pairs, is_classifier, tree, id, weight, bias, counts, adjust

    def add_tree(*args: Any, **kwargs: Any) -> Any:
        if len(args) > adjust_position:
            args = (*args[:adjust_position], True, *args[adjust_position + 1 :])
        else:
            kwargs["adjust_threshold_for_sklearn"] = True
        return original_tree(*args, **kwargs)

    add_node._edge_convert_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node
    random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting = add_tree


class SklearnModel(SourceModel):
    """A fitted scikit-learn estimator or pipeline."""

    def __init__(self, estimator: Any) -> None:
        from sklearn.base import is_classifier, is_outlier_detector, is_regressor
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(estimator)
        except NotFittedError as err:
            raise ConversionError(f"{_describe(estimator)} is not fitted: fit it first") from err
        except TypeError as err:
            raise ConversionError(f"{type(estimator).__name__} is not an estimator") from err
        self.estimator = estimator
        self.final = _final_step(estimator)
        module = type(self.final).__module__.split(".")[0]
        self.framework = module if module in gradient_boosting.FRAMEWORKS else "scikit-learn"
        self.description = _describe(estimator)
        self.tree_ensemble = any(word in type(self.final).__name__ for word in _TREE_WORDS)
        if is_outlier_detector(estimator):
            self._kind = "outlier"
        elif is_classifier(estimator):
            self._kind = "classifier" if hasattr(self.final, "predict_proba") else "margin"
        elif is_regressor(estimator):
            self._kind = "regressor"
        else:
            raise ConversionError(
                f"{self.description} is neither a classifier, a regressor nor an outlier "
                "detector; the converter needs a model that predicts"
            )

    @property
    def n_features(self) -> int | None:
        count = getattr(self.estimator, "n_features_in_", None)
        return int(count) if count is not None else None

    @property
    def feature_names(self) -> list[str] | None:
        names = getattr(self.estimator, "feature_names_in_", None)
        return [str(name) for name in names] if names is not None else None

    @property
    def outputs(self) -> list[OutputSpec]:
        if self._kind == "outlier":
            return [
                OutputSpec(name="label", kind="label", labels=["1", "-1"]),
                OutputSpec(name="score", kind="anomaly_score"),
            ]
        if self._kind == "regressor":
            return [OutputSpec(name="prediction", kind="regression")]
        labels = [str(label) for label in self.final.classes_]
        second = (
            OutputSpec(name="probabilities", kind="probabilities", labels=labels)
            if self._kind == "classifier"
            else OutputSpec(name="decision", kind="regression")
        )
        return [OutputSpec(name="label", kind="label", labels=labels), second]

    def versions(self) -> dict[str, str]:
        import onnx
        import skl2onnx
        import sklearn

        found = {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
        }
        if self.framework != "scikit-learn":
            found |= gradient_boosting.versions(self.framework)
        return found

    def _frame(self, rows: npt.NDArray[np.float32], features: list[str]) -> Any:
        if self.feature_names is None:
            return rows
        import pandas as pd

        return pd.DataFrame(rows, columns=features)

    def predict(self, rows: npt.NDArray[np.float32], features: list[str]) -> Tensors:
        data = self._frame(rows, features)
        n = len(rows)
        label = np.asarray(self.estimator.predict(data))
        if self._kind == "regressor":
            return [label.astype(np.float64).reshape(n, -1)]
        if self._kind == "outlier":
            return [label, np.asarray(self.estimator.decision_function(data)).reshape(n, -1)]
        if self._kind == "margin":
            return [label, np.asarray(self.estimator.decision_function(data)).reshape(n, -1)]
        return [label, np.asarray(self.estimator.predict_proba(data))]

    def to_onnx(self, rows: npt.NDArray[np.float32], features: list[str]) -> bytes:
        from skl2onnx.common.data_types import FloatTensorType

        if self.framework != "scikit-learn":
            gradient_boosting.register_converters(self.framework)
        _patch_skl2onnx()
        opsets = {"": OPSET, "ai.onnx.ml": ML_OPSET}
        single = [("input", FloatTensorType([None, len(features)]))]
        try:
            proto = self._convert(single, opsets)
        except ConversionError:
            if self.feature_names is None:
                raise
            # Fitted on a DataFrame with columns picked by name: convert with one input per
            # column, then feed those from one (batch, features) input.
            per_column = [(name, FloatTensorType([None, 1])) for name in features]
            proto = _merge_inputs(self._convert(per_column, opsets), features)
        return bytes(proto.SerializeToString())

    def _options(self) -> dict[int, dict[str, Any]]:
        """Per-estimator skl2onnx options: plain probability tensors, no ZipMap."""
        if self._kind == "classifier":
            return {id(self.final): {"zipmap": False}}
        if self._kind == "margin":
            # Naming any option of the final step stops skl2onnx from adding a ZipMap that a
            # classifier without probabilities cannot have.
            return {id(self.final): {"output_class_labels": False}}
        return {}

    def _convert(self, inputs: list[tuple[str, Any]], opsets: dict[str, int]) -> Any:
        import skl2onnx

        try:
            return skl2onnx.convert_sklearn(
                self.estimator, initial_types=inputs, options=self._options(), target_opset=opsets
            )
        except Exception as err:  # skl2onnx raises anything, from NameError to RuntimeError
            raise _refusal(self.description, err) from err


def _refusal(description: str, err: Exception) -> ConversionError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConversionError(f"skl2onnx cannot convert {description}: {first[:300]}")


def _merge_inputs(proto: Any, features: list[str]) -> Any:
    """Replace one-column inputs named after the features by one ``input`` split into them."""
    from onnx import TensorProto, helper

    # At the pinned opset 17, Split without sizes cuts the input into equal one-column parts.
    split = helper.make_node("Split", ["input"], list(features), axis=1)
    if len(features) == 1:
        split = helper.make_node("Identity", ["input"], list(features))
    del proto.graph.input[:]
    proto.graph.input.append(
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(features)])
    )
    proto.graph.node.insert(0, split)
    return proto
