"""A model ready to serve: its verified bundle, its runner, and how its outputs are reported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.baseline import Baseline
from edge_agent.contracts.bundle import Bundle, BundleError, load_public_key, read_bundle
from edge_agent.contracts.manifest import ModelManifest
from edge_agent.contracts.payloads import OutputValue
from edge_agent.errors import ModelError
from edge_agent.runners import ModelRunner, build_runner, flatten_outputs

__all__ = ["LoadedModel", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded, warmed-up model. ``predict`` runs on a worker thread, never on the event loop."""

    bundle: Bundle
    runner: ModelRunner

    @property
    def manifest(self) -> ModelManifest:
        return self.bundle.manifest

    def baseline_means(self) -> dict[str, float]:
        """The mean of every input feature in the bundle's baseline (empty without a baseline)."""
        raw = self.bundle.files.get("baseline.json")
        if raw is None:
            return {}
        try:
            baseline = Baseline.model_validate_json(raw)
        except ValueError as err:
            raise ModelError(
                f"baseline.json of {self.manifest.label} is unreadable: {err}"
            ) from err
        return {name: dist.mean for name, dist in baseline.features.items()}

    def predict(self, rows: npt.NDArray[np.float32]) -> list[dict[str, OutputValue]]:
        """Outputs per row, flattened for results; raises ModelError, never anything else."""
        tensors = self.runner.predict(rows)
        try:
            return flatten_outputs(self.manifest.outputs, tensors, rows.shape[0])
        except ModelError:
            raise
        except Exception as err:  # a model's odd output must not stop the agent
            raise ModelError(f"outputs of {self.manifest.label} cannot be reported: {err}") from err


def load_model(
    path: Path,
    *,
    public_key: Path | None = None,
    runner: str = "auto",
    threads: int = 1,
    expected_features: list[str] | None = None,
) -> LoadedModel:
    """Verify, load and warm up a bundle. Blocking: call it off the event loop.

    Raises ModelError saying why the model cannot serve (bad bundle, wrong features, bad model).
    """
    try:
        key = load_public_key(public_key) if public_key is not None else None
        bundle = read_bundle(path, key, require_signature=public_key is not None)
    except BundleError as err:
        raise ModelError(str(err)) from err
    manifest = bundle.manifest
    if expected_features is not None and expected_features != manifest.feature_names:
        raise ModelError(
            f"model {manifest.label} wants features {manifest.feature_names}, "
            f"the config feeds {expected_features}"
        )
    model_runner = build_runner(bundle, preference=runner, threads=threads)
    if model_runner.input_width != len(manifest.inputs):
        raise ModelError(
            f"model {manifest.label} takes {model_runner.input_width} inputs but its manifest "
            f"lists {len(manifest.inputs)} features"
        )
    model_runner.warmup()
    return LoadedModel(bundle, model_runner)
