"""The activation pipeline's blocking steps: verify, check features, load, warm up, golden vectors.

Each step is a plain function the lifecycle manager runs off the event loop and acks on its own,
so the fleet sees exactly which step refused a model. A step that refuses raises StepFailed
naming the step and a reason a person can act on. Nothing here touches the serving model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.contracts.baseline import Baseline
from edge_agent.contracts.bundle import Bundle, BundleError, load_public_key, read_bundle
from edge_agent.contracts.golden import GOLDEN_FILE, GoldenError, GoldenVectors, check_golden
from edge_agent.contracts.manifest import WindowSpec
from edge_agent.errors import ModelError
from edge_agent.model import LoadedModel
from edge_agent.runners import ModelRunner, build_runner

__all__ = [
    "ActivationSettings",
    "Step",
    "StepFailed",
    "check_features",
    "load",
    "read_baseline",
    "read_golden",
    "run_golden",
    "verify",
    "warm",
]

# The acked steps, in order (docs/control-protocol.md).
Step = str
STEPS: tuple[Step, ...] = (
    "verified",
    "features",
    "loaded",
    "warmed",
    "golden",
    "shadow",
    "active",
    "kept",
    "rolled_back",
)


class StepFailed(Exception):
    """A step refused the candidate; ``step`` is the acked step name, ``reason`` says why."""

    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class ActivationSettings:
    """What every activation checks against: the agent's key, features and runner choice."""

    public_key: Path | None
    features: list[str] | None
    runner: str = "auto"
    threads: int = 1
    # The window spec the agent's window builder was made for (checked once one model served).
    window: WindowSpec | None = None
    window_known: bool = False


def verify(path: Path, settings: ActivationSettings) -> Bundle:
    """Step ``verified``: the signature (when a key is configured) and every file's hash."""
    try:
        key = load_public_key(settings.public_key) if settings.public_key is not None else None
        return read_bundle(path, key, require_signature=settings.public_key is not None)
    except BundleError as err:
        raise StepFailed("verified", str(err)) from err


def check_features(bundle: Bundle, settings: ActivationSettings) -> None:
    """Step ``features``: the bundle's inputs are the configured features, in the same order,
    built with the window spec the agent's window builder was made for."""
    wanted = bundle.manifest.feature_names
    if settings.features is not None and settings.features != wanted:
        raise StepFailed(
            "features",
            f"model {bundle.manifest.label} wants features {wanted}, "
            f"the config feeds {settings.features}",
        )
    if settings.window_known and bundle.manifest.window != settings.window:
        raise StepFailed(
            "features",
            f"model {bundle.manifest.label} builds its inputs with the window spec "
            f"{_describe_window(bundle.manifest.window)}; this agent builds "
            f"{_describe_window(settings.window)} (restart the agent to change windows)",
        )


def _describe_window(spec: WindowSpec | None) -> str:
    return "none (one row per reading)" if spec is None else spec.model_dump_json()


def load(bundle: Bundle, settings: ActivationSettings) -> LoadedModel:
    """Step ``loaded``: build the runtime session for the bundle's model file."""
    try:
        runner: ModelRunner = build_runner(
            bundle, preference=settings.runner, threads=settings.threads
        )
    except ModelError as err:
        raise StepFailed("loaded", str(err)) from err
    manifest = bundle.manifest
    if runner.input_width != len(manifest.inputs):
        raise StepFailed(
            "loaded",
            f"model {manifest.label} takes {runner.input_width} inputs but its manifest lists "
            f"{len(manifest.inputs)} features",
        )
    return LoadedModel(bundle, runner)


def warm(model: LoadedModel) -> None:
    """Step ``warmed``: one inference on zeros, so the first live window is not slowed."""
    try:
        model.runner.warmup()
    except ModelError as err:
        raise StepFailed("warmed", str(err)) from err


def read_golden(bundle: Bundle) -> GoldenVectors | None:
    if GOLDEN_FILE not in bundle.files:
        return None
    try:
        return GoldenVectors.from_bytes(bundle.files[GOLDEN_FILE])
    except GoldenError as err:
        raise StepFailed("golden", str(err)) from err


def run_golden(model: LoadedModel) -> int:
    """Step ``golden``: re-run the bundle's golden rows; return how many rows agreed.

    A bundle without golden vectors passes with 0 rows (the ack says so); the converters always
    write them.
    """
    golden = read_golden(model.bundle)
    if golden is None:
        return 0
    if golden.feature_names != model.manifest.feature_names:
        raise StepFailed(
            "golden",
            f"golden vectors are for features {golden.feature_names}, the model takes "
            f"{model.manifest.feature_names}",
        )
    try:
        result = check_golden(golden, model.predict)
    except ModelError as err:
        raise StepFailed("golden", f"the model failed on the golden rows: {err}") from err
    if not result.passed:
        raise StepFailed("golden", result.describe())
    return result.rows


def read_baseline(bundle: Bundle) -> Baseline | None:
    """The bundle's drift baseline, or None when it has none (drift is then not scored)."""
    raw = bundle.files.get("baseline.json")
    if raw is None:
        return None
    try:
        return Baseline.model_validate_json(raw)
    except ValueError as err:
        raise StepFailed("verified", f"baseline.json is invalid: {err}") from err
