"""The model manifest: what a bundle holds and how its model is fed and read."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MANIFEST_SCHEMA_VERSIONS",
    "DriftThresholds",
    "FeatureSpec",
    "ModelFormat",
    "ModelManifest",
    "OutputKind",
    "OutputSpec",
    "ParityReport",
    "QuantizationReport",
    "WindowFeature",
    "WindowSpec",
    "supported_file_version",
    "version_key",
]

ModelFormat = Literal["onnx", "tflite"]
OutputKind = Literal["probabilities", "label", "regression", "anomaly_score"]
Aggregation = Literal["last", "mean", "std", "min", "max", "rms", "p2p", "slope", "count"]

MODEL_FILES: dict[ModelFormat, str] = {"onnx": "model.onnx", "tflite": "model.tflite"}

# The manifest and baseline layouts this build reads. A bundle written by a newer converter is
# refused by name rather than half understood.
MANIFEST_SCHEMA_VERSIONS = frozenset({1})

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """An ordering key: a monotonic integer ``7`` sorts as ``7.0.0``; pre-releases sort first."""
    if version.isdigit():
        return (int(version), 0, 0, 1, "")
    match = _SEMVER.match(version)
    if match is None:
        raise ValueError(
            f"model version {version!r} is neither a whole number (7) nor semver (1.4.2)"
        )
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def supported_file_version(what: str, version: int) -> int:
    """``version`` if this build reads that layout of ``what``; a message that says so otherwise."""
    if version not in MANIFEST_SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in sorted(MANIFEST_SCHEMA_VERSIONS))
        raise ValueError(
            f"{what} schema_version {version} is not supported (this build reads {readable}); "
            "upgrade edge-agent, or convert the model with a converter of the same release"
        )
    return version


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One model input, in the order the model expects it."""

    name: str = Field(min_length=1)
    unit: str | None = None
    dtype: Literal["float32", "float64", "int64"] = "float32"
    valid_min: float | None = None
    valid_max: float | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> FeatureSpec:
        if (
            self.valid_min is not None
            and self.valid_max is not None
            and self.valid_min > self.valid_max
        ):
            raise ValueError(f"feature {self.name}: valid_min is above valid_max")
        return self


class OutputSpec(_Strict):
    """One model output as results report it."""

    name: str = Field(min_length=1)
    kind: OutputKind
    labels: list[str] | None = None  # class labels, for probabilities and label outputs


class WindowFeature(_Strict):
    """A model input computed from a tag over a window: ``vibration_rms`` = rms of ``vibration``."""

    name: str
    tag: str
    aggregation: Aggregation


class WindowSpec(_Strict):
    """How the model's inputs are built from tag samples. Absent: each reading is one row."""

    mode: Literal["tumbling", "sliding", "count", "snapshot"]
    length_s: float | None = Field(None, gt=0)
    hop_s: float | None = Field(None, gt=0)
    count: int | None = Field(None, gt=0)
    features: list[WindowFeature]


class ParityReport(_Strict):
    """How closely the converted model reproduced the source model on the reference rows.

    Errors are keyed by output name. ``disagreeing_rows`` are reference row indices (0-based, in
    file order) where some output broke its tolerance; ``allowed_disagreeing_rows`` is how many the
    policy accepts (non-zero only for tree ensembles, whose float32 thresholds can flip a row that
    sits on a split).
    """

    passed: bool
    rows: int
    policy: str
    format: ModelFormat | None = None
    max_abs_error: dict[str, float] = Field(default_factory=dict)
    max_rel_error: dict[str, float] = Field(default_factory=dict)
    tolerance: dict[str, float] = Field(default_factory=dict)  # absolute, per output
    label_agreement: float | None = None
    disagreeing_rows: list[int] = Field(default_factory=list)
    disagreeing_count: int = Field(0, ge=0)  # may exceed len(disagreeing_rows), which is capped
    allowed_disagreeing_rows: int = Field(0, ge=0)


class QuantizationReport(_Strict):
    """What quantizing one model file cost: its size and how far it moved from the float model."""

    format: ModelFormat
    method: Literal["dynamic-int8", "static-int8", "float16"]
    float_bytes: int = Field(gt=0)
    quantized_bytes: int = Field(gt=0)
    rows: int
    max_abs_change: dict[str, float] = Field(default_factory=dict)  # per output, vs float model
    label_agreement: float | None = None  # share of rows whose label the float model also gives


class DriftThresholds(_Strict):
    """Effect-size thresholds for drift alerts (never p-values: sensor data is autocorrelated)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25


class ModelManifest(_Strict):
    """The manifest of a model bundle. Every file's sha256 is here, and the signature covers it."""

    schema_version: int = 1
    name: str
    version: str
    created: str  # ISO 8601, UTC
    source_framework: str
    framework_versions: dict[str, str] = Field(default_factory=dict)
    converter_version: str
    opset: int | None = None
    formats: list[ModelFormat]
    quantization: str = "none"
    inputs: list[FeatureSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    window: WindowSpec | None = None
    files: dict[str, str]  # file name in the bundle -> sha256 hex
    parity: ParityReport | None = None  # the first format's; a bundle is written only if all pass
    parity_by_format: dict[str, ParityReport] = Field(default_factory=dict)
    quantization_reports: list[QuantizationReport] = Field(default_factory=list)
    drift_thresholds: DriftThresholds = Field(default_factory=DriftThresholds)

    @field_validator("schema_version")
    @classmethod
    def _readable_layout(cls, value: int) -> int:
        return supported_file_version("manifest", value)

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"model name {value!r} may hold only letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version_is_ordered(cls, value: str) -> str:
        version_key(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        names = [feature.name for feature in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input feature names must be unique")
        if not self.formats:
            raise ValueError("formats must name at least one model file")
        for fmt in self.formats:
            if MODEL_FILES[fmt] not in self.files:
                raise ValueError(f"format {fmt} is listed but {MODEL_FILES[fmt]} has no hash")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.inputs]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"
