"""The converter's Python API: ``convert(model, reference, ...)`` proves parity and writes a bundle.

The steps, in order: read the reference rows, load the model into its family, run the source
model, export to each target (ONNX, TFLite), run each export with the agent's own runner and
compare (the parity certificate; beyond tolerance nothing is written), quantize if asked and
measure what that changed, then compute the drift baseline and the golden vectors and write the
signed bundle.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from converters.baseline import build_baseline
from converters.errors import ConversionError
from converters.families import SourceModel, load_source
from converters.features import FeatureFile, read_feature_file
from converters.golden import build_golden, flat_columns
from converters.parity import Comparison, ParityPolicy, compare
from converters.progress import Progress
from converters.reference import Reference, read_reference
from edge_agent import __version__
from edge_agent.contracts.bundle import BundleError, load_private_key, write_bundle
from edge_agent.contracts.golden import GOLDEN_FILE
from edge_agent.contracts.manifest import (
    MODEL_FILES,
    FeatureSpec,
    ModelFormat,
    ModelManifest,
    OutputSpec,
    QuantizationReport,
)
from edge_agent.errors import ModelError
from edge_agent.runners.base import ModelRunner

__all__ = [
    "QUANTIZATIONS",
    "TARGETS",
    "ConversionError",
    "ParityPolicy",
    "convert",
    "read_reference",
]

Target = Literal["onnx", "tflite", "both"]
Quantization = Literal["none", "dynamic-int8", "static-int8", "float16"]
TARGETS: tuple[Target, ...] = ("onnx", "tflite", "both")
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "dynamic-int8", "static-int8", "float16")


@dataclass
class _Export:
    """One target's model file: float as exported, then what ships (quantized or not)."""

    format: ModelFormat
    float_model: bytes
    float_outputs: list[Any]
    parity: Comparison
    model: bytes = b""
    outputs: list[Any] = field(default_factory=list)
    quantization: QuantizationReport | None = None


def _check_identity(name: str, version: str) -> None:
    """Refuse a bad name or version before any slow work."""
    try:
        ModelManifest(
            name=name,
            version=version,
            created="",
            source_framework="",
            converter_version="",
            formats=["onnx"],
            inputs=[FeatureSpec(name="x")],
            outputs=[OutputSpec(name="y", kind="regression")],
            files={"model.onnx": ""},
        )
    except ValidationError as err:
        raise ConversionError(err.errors()[0]["msg"].removeprefix("Value error, ")) from err


def _formats(target: str, quantize: str) -> list[ModelFormat]:
    if target not in TARGETS:
        raise ConversionError(f"unknown target {target}: expected onnx, tflite or both")
    if quantize not in QUANTIZATIONS:
        raise ConversionError(
            f"unknown quantization {quantize}: expected none, dynamic-int8, static-int8 or float16"
        )
    if quantize == "float16" and target != "tflite":
        raise ConversionError(
            "float16 is a TFLite quantization: use --target tflite, or dynamic-int8 / "
            "static-int8 for ONNX"
        )
    return ["onnx", "tflite"] if target == "both" else [target]


def _match_features(source: SourceModel, reference: Reference) -> Reference:
    if source.feature_names is not None:
        return reference.select(source.feature_names)
    expected = source.n_features
    if expected is not None and expected != len(reference.features):
        raise ConversionError(
            f"the model wants {expected} features but {reference.source} has "
            f"{len(reference.features)} ({', '.join(reference.features)})"
        )
    return reference


def _runner(model_format: ModelFormat, model: bytes) -> ModelRunner:
    """The agent's own runner for this format: parity is measured with the device's code."""
    try:
        if model_format == "onnx":
            from edge_agent.runners.onnx import OnnxRunner

            return OnnxRunner(model)
        from edge_agent.runners.litert import LiteRtRunner

        return LiteRtRunner(model)
    except ModelError as err:
        raise ConversionError(f"the converted {model_format} model does not load: {err}") from err


def _run(model_format: ModelFormat, model: bytes, rows: np.ndarray[Any, Any]) -> list[Any]:
    try:
        return _runner(model_format, model).predict(rows)
    except ModelError as err:
        raise ConversionError(f"the converted {model_format} model failed to run: {err}") from err


def _parity_failure(export: _Export) -> str:
    report = export.parity.report
    worst = ", ".join(
        f"{name} max error {error:.3g} (tolerance {report.tolerance[name]:.3g})"
        for name, error in report.max_abs_error.items()
    )
    if report.label_agreement is not None:
        worst += f"{', ' if worst else ''}labels agree on {report.label_agreement:.2%} of rows"
    rows = ", ".join(str(row) for row in report.disagreeing_rows[:10])
    return (
        f"parity check failed for {export.format}: {report.disagreeing_count} of {report.rows} "
        f"reference rows disagree (allowed {report.allowed_disagreeing_rows}; rows {rows}"
        f"{' ...' if report.disagreeing_count > 10 else ''}); {worst}. No bundle written"
    )


def convert(
    model: Path | str | Any,
    reference: Path | str | Reference,
    *,
    name: str,
    version: str,
    output: Path | str,
    target: Target = "onnx",
    quantize: Quantization = "none",
    sign_key: Path | None = None,
    features: Path | FeatureFile | None = None,
    labels: list[str] | None = None,
    model_class: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    feature_names: list[str] | None = None,
    policy: ParityPolicy | None = None,
    progress: Progress | None = None,
) -> ModelManifest:
    """Convert ``model`` (a file path, or a fitted model object) and write the bundle ``output``.

    ``reference`` rows (CSV, Parquet, ``.npy``) feed the parity check, the quantization
    calibration, the drift baseline and the golden vectors. ``labels`` makes a network a
    classifier; ``model_class`` (``module:Class``, with ``model_kwargs``) builds a PyTorch state
    dict's network; ``feature_names`` names the columns of a plain ``.npy``. Returns the manifest
    as written; raises ConversionError (nothing written) when anything is off.
    """
    policy = policy or ParityPolicy()
    model = Path(model) if isinstance(model, str) else model
    reference = Path(reference) if isinstance(reference, str) else reference
    output = Path(output)
    formats = _formats(target, quantize)
    per_format = {"onnx": 1, "tflite": 2}
    steps = 6 + sum(per_format[f] + (quantize != "none") for f in formats)
    if progress is None:
        progress = Progress(steps, enabled=False)
    else:
        progress.extend(steps)
    _check_identity(name, version)
    if not output.parent.is_dir():
        raise ConversionError(f"cannot write {output}: {output.parent} is not a directory")
    try:
        key = load_private_key(sign_key) if sign_key is not None else None
    except BundleError as err:
        raise ConversionError(str(err)) from err
    feature_file = read_feature_file(features) if isinstance(features, Path) else features

    source, reference, specs = _prepare(
        model, reference, feature_file, formats, labels, model_class, model_kwargs,
        feature_names, progress,
    )  # fmt: skip
    rows, names = reference.rows, reference.features
    with progress.step(f"running the source model on {len(rows)} reference rows"):
        try:
            expected = source.predict(rows, names)
        except ConversionError:
            raise
        except Exception as err:  # the user's model can raise anything
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConversionError(f"the source model fails on the reference rows: {first}") from err
    with progress.step("exporting to ONNX"):
        onnx_model = source.to_onnx(rows, names)
    exports = []
    for model_format in formats:
        exports.append(
            _export(
                model_format,
                source,
                onnx_model,
                expected,
                rows,
                quantize=quantize,
                policy=policy,
                progress=progress,
            )
        )
    with progress.step("computing the drift baseline and golden vectors"):
        files = _evidence(source, reference, specs, expected, exports)
    with progress.step(f"writing {output}"):
        files |= {MODEL_FILES[e.format]: e.model for e in exports}
        manifest = ModelManifest(
            name=name,
            version=version,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source_framework=source.framework,
            framework_versions=source.versions(),
            converter_version=__version__,
            opset=source.opset,
            formats=formats,
            quantization=quantize,
            inputs=specs,
            outputs=source.outputs,
            window=feature_file.window if feature_file else None,
            files=dict.fromkeys(files, ""),
            parity=exports[0].parity.report,
            parity_by_format={e.format: e.parity.report for e in exports},
            quantization_reports=[e.quantization for e in exports if e.quantization is not None],
        )
        try:
            return write_bundle(output, manifest, files, key)
        except (BundleError, OSError) as err:
            raise ConversionError(f"cannot write {output}: {err}") from err


def _prepare(  # noqa: PLR0917 - one call site
    model: Path | Any,
    reference: Path | Reference,
    feature_file: FeatureFile | None,
    formats: list[ModelFormat],
    labels: list[str] | None,
    model_class: str | None,
    model_kwargs: Mapping[str, Any] | None,
    feature_names: list[str] | None,
    progress: Progress,
) -> tuple[SourceModel, Reference, list[FeatureSpec]]:
    """Read the reference rows, load the model, and line the two up feature by feature."""
    with progress.step("reading reference rows"):
        if isinstance(reference, Path):
            reference = read_reference(reference, feature_names)
    with progress.step("loading the model"):
        source = load_source(
            model, labels=labels, model_class=model_class, model_kwargs=model_kwargs
        )
        if "tflite" in formats and not source.tflite_capable:
            raise ConversionError(
                f"{source.description} ({source.framework}) cannot be expressed in TFLite, "
                "which takes neural networks (Keras, PyTorch, ONNX); use --target onnx"
            )
        reference = _match_features(source, reference)
        specs = (feature_file or FeatureFile()).specs_for(reference.features)
        if feature_file is not None and feature_file.window is not None:
            window_names = [feature.name for feature in feature_file.window.features]
            if window_names != reference.features:
                raise ConversionError(
                    f"the window builds {', '.join(window_names)}; the model takes "
                    f"{', '.join(reference.features)} in that order"
                )
    return source, reference, specs


def _evidence(
    source: SourceModel,
    reference: Reference,
    specs: list[FeatureSpec],
    expected: list[Any],
    exports: list[_Export],
) -> dict[str, bytes]:
    """``baseline.json`` and ``golden.npz`` from the reference rows and the shipped models."""
    excluded = np.zeros(len(reference.rows), dtype=bool)
    tolerance: dict[str, float] = {}
    for export in exports:
        excluded |= export.parity.bad_rows
        for output_name, value in export.parity.tolerance.items():
            tolerance[output_name] = max(tolerance.get(output_name, 0.0), value)
    golden = build_golden(
        reference.features,
        reference.rows,
        source.outputs,
        expected,
        shipped=[e.outputs for e in exports],
        excluded=excluded,
        tolerance=tolerance,
    )
    # Drift is measured on what the device's model answers: the first shipped model's outputs.
    answers = flat_columns(source.outputs, exports[0].outputs)
    baseline = build_baseline(specs, reference.rows, {n: c for n, (_, c) in answers.items()})
    return {
        "baseline.json": baseline.model_dump_json(indent=2).encode(),
        GOLDEN_FILE: golden.to_bytes(),
    }


def _export(
    model_format: ModelFormat,
    source: SourceModel,
    onnx_model: bytes,
    expected: list[Any],
    rows: np.ndarray[Any, Any],
    *,
    quantize: str,
    policy: ParityPolicy,
    progress: Progress,
) -> _Export:
    """Build one target's model, prove its parity, quantize it if asked."""
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        saved_model = Path(tmp) / "saved_model"
        if model_format == "onnx":
            float_model = onnx_model
        else:
            from converters.targets.tflite import saved_model_to_tflite

            with progress.step("converting to TFLite"):
                source.export_saved_model(saved_model, onnx_model)
                float_model = saved_model_to_tflite(saved_model, "none", rows)
        with progress.step(f"checking {model_format} parity on {len(rows)} rows"):
            float_outputs = _run(model_format, float_model, rows)
            parity = compare(
                source.outputs,
                expected,
                float_outputs,
                policy=policy,
                tree_ensemble=source.tree_ensemble,
                model_format=model_format,
            )
        export = _Export(
            model_format, float_model, float_outputs, parity, float_model, float_outputs
        )
        if not parity.report.passed:
            raise ConversionError(_parity_failure(export))
        if quantize == "none":
            return export
        with progress.step(f"quantizing the {model_format} model ({quantize})"):
            if model_format == "onnx":
                from converters.targets.onnx import quantize_onnx

                export.model = quantize_onnx(float_model, quantize, rows)
            else:
                export.model = saved_model_to_tflite(saved_model, quantize, rows)
            export.outputs = _run(model_format, export.model, rows)
    change = compare(
        source.outputs, float_outputs, export.outputs, policy=policy, tree_ensemble=False
    ).report
    export.quantization = QuantizationReport(
        format=model_format,
        method=quantize,
        float_bytes=len(float_model),
        quantized_bytes=len(export.model),
        rows=len(rows),
        max_abs_change=change.max_abs_error,
        label_agreement=change.label_agreement,
    )
    return export
