"""LightGBM and XGBoost: their scikit-learn API models, converted by onnxmltools inside skl2onnx.

Registering onnxmltools' converters with skl2onnx lets a LightGBM or XGBoost model convert on its
own or as the last step of a scikit-learn pipeline, through the same code path as any estimator.
"""

from __future__ import annotations

import importlib

__all__ = ["FRAMEWORKS", "register_converters", "versions"]

FRAMEWORKS = ("lightgbm", "xgboost")
_registered: set[str] = set()


def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
        options={"split": None},
    )


def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor,
        "XGBoostXGBRegressor",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


def register_converters(framework: str) -> None:
    """Teach skl2onnx the models of ``framework`` (once per process)."""
    if framework in _registered:
        return
    {"lightgbm": _register_lightgbm, "xgboost": _register_xgboost}[framework]()
    _registered.add(framework)


def versions(framework: str) -> dict[str, str]:
    import onnxmltools

    module = importlib.import_module(framework)
    return {framework: str(module.__version__), "onnxmltools": str(onnxmltools.__version__)}
