"""The optional features file: units, valid ranges and a window spec for the manifest.

JSON or TOML, for example::

    [[features]]
    name = "temperature"
    unit = "degC"
    valid_min = -20
    valid_max = 150

    [window]            # optional: how the agent builds the inputs from tag samples
    mode = "tumbling"
    length_s = 10
    features = [{ name = "temperature", tag = "temperature", aggregation = "mean" }]
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from converters.errors import ConversionError
from edge_agent.contracts.manifest import FeatureSpec, WindowSpec

__all__ = ["FeatureFile", "read_feature_file"]


@dataclass(frozen=True)
class FeatureFile:
    """What a features file says about some features (by name) and the window, if any."""

    specs: dict[str, FeatureSpec] = field(default_factory=dict)
    window: WindowSpec | None = None

    def specs_for(self, names: list[str]) -> list[FeatureSpec]:
        """One spec per model input, in the model's order; unlisted features get bare specs."""
        unknown = sorted(set(self.specs) - set(names))
        if unknown:
            raise ConversionError(
                f"the features file describes {', '.join(unknown)}, which the model does not "
                f"take (it takes {', '.join(names)})"
            )
        return [self.specs.get(name, FeatureSpec(name=name)) for name in names]


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def read_feature_file(path: Path) -> FeatureFile:
    """Read a JSON or TOML features file; ConversionError names the file and the bad key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"cannot read features file {path}: {err}") from err
    data: Any
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConversionError(f"{path}: not valid {kind}: {err}") from err
    if isinstance(data, list):
        data = {"features": data}
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a table with a 'features' list")
    unknown = sorted(set(data) - {"features", "window"})
    if unknown:
        raise ConversionError(
            f"{path}: unknown key {', '.join(unknown)} (expected features, window)"
        )
    entries = data.get("features", [])
    if not isinstance(entries, list):
        raise ConversionError(f"{path}: 'features' must be a list of {{name, unit, ...}} tables")
    specs: dict[str, FeatureSpec] = {}
    for index, entry in enumerate(entries):
        try:
            spec = FeatureSpec.model_validate(entry)
        except ValidationError as err:
            raise ConversionError(f"{path}: features[{index}]: {_describe(err)}") from err
        if spec.name in specs:
            raise ConversionError(f"{path}: feature {spec.name} is described twice")
        specs[spec.name] = spec
    window = None
    if "window" in data:
        try:
            window = WindowSpec.model_validate(data["window"])
        except ValidationError as err:
            raise ConversionError(f"{path}: window.{_describe(err)}") from err
    return FeatureFile(specs, window)
