"""Running a bundle's golden vectors the way the device does, with the agent's own runners."""

from __future__ import annotations

from edge_agent.contracts.bundle import Bundle
from edge_agent.contracts.golden import GOLDEN_FILE, GoldenResult, GoldenVectors, check_golden
from edge_agent.errors import ModelError
from edge_agent.model import LoadedModel
from edge_agent.runners import build_runner

__all__ = ["run_golden"]


def run_golden(bundle: Bundle) -> dict[str, GoldenResult | None]:
    """The golden verdict of each model in ``bundle``; None where its runtime is not installed.

    Raises ModelError when the bundle has no golden vectors or a model does not load.
    """
    if GOLDEN_FILE not in bundle.files:
        raise ModelError(f"bundle {bundle.manifest.label} has no {GOLDEN_FILE}")
    golden = GoldenVectors.from_bytes(bundle.files[GOLDEN_FILE])
    verdicts: dict[str, GoldenResult | None] = {}
    for model_format in bundle.manifest.formats:
        try:
            runner = build_runner(bundle, preference=model_format)
        except ModelError as err:
            if "no LiteRT runtime" in str(err):
                verdicts[model_format] = None
                continue
            raise
        verdicts[model_format] = check_golden(golden, LoadedModel(bundle, runner).predict)
    return verdicts
