"""The drift monitor: one window of a model's inputs and outputs, summarized against its baseline.

Pure logic, no I/O and no clock: the lifecycle manager feeds it every answered batch and asks
for a summary when the window is over. Values are buffered and folded into mergeable summaries
(:mod:`edge_agent.contracts.drift`) a few thousand rows at a time, so a busy line costs a few
numpy calls per fold instead of per batch, and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.baseline import Baseline, Distribution
from edge_agent.contracts.drift import (
    Level,
    empty_summary,
    level,
    merge_pair,
    score,
    summarize,
)
from edge_agent.contracts.manifest import DriftThresholds, ModelManifest
from edge_agent.contracts.payloads import FeatureSummary, OutputValue

__all__ = ["DriftMonitor", "DriftReport"]

FOLD_ROWS = 4096


@dataclass(frozen=True)
class DriftReport:
    """One window's summaries, scores and levels (levels only where enough values were seen)."""

    model: str
    model_version: str
    window_start: float
    window_end: float
    features: dict[str, FeatureSummary]
    outputs: dict[str, FeatureSummary]
    scores: dict[str, dict[str, float]]
    levels: dict[str, Level]


class DriftMonitor:
    """Drift of one model over consecutive windows. Called from one thread (the event loop)."""

    def __init__(
        self,
        manifest: ModelManifest,
        baseline: Baseline | None,
        *,
        window_s: float,
        min_count: int,
        start: float,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.manifest = manifest
        self.baseline = baseline
        self.window_s = window_s
        self.min_count = min_count
        self.thresholds: DriftThresholds = manifest.drift_thresholds
        self.window_start = start
        self._features = manifest.feature_names
        self._rows: list[npt.NDArray[np.float32]] = []
        self._buffered = 0
        self._outputs: dict[str, list[float]] = {}
        self._reset()

    def _distribution(self, name: str, *, output: bool) -> Distribution | None:
        if self.baseline is None:
            return None
        return (self.baseline.outputs if output else self.baseline.features).get(name)

    def _reset(self) -> None:
        self._feature_sums = {
            name: empty_summary(self._distribution(name, output=False)) for name in self._features
        }
        self._missing = dict.fromkeys(self._features, 0)
        self._output_sums: dict[str, FeatureSummary] = {}

    def update(
        self, rows: npt.NDArray[np.float32], outputs: Sequence[Mapping[str, OutputValue]]
    ) -> None:
        """Add one answered batch: its input rows and each row's flat outputs."""
        self._rows.append(rows)
        self._buffered += rows.shape[0]
        for result in outputs:
            for name, value in result.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._outputs.setdefault(name, []).append(float(value))
        if self._buffered >= FOLD_ROWS:
            self._fold()

    def missing(self, features: Sequence[str]) -> None:
        """Count a row or window that had no value for these features (refused, skipped or
        filled by the missing-tag policy): they show as ``missing``, beside the values seen."""
        for name in features:
            if name in self._missing:
                self._missing[name] += 1

    def _fold(self) -> None:
        if self._rows:
            matrix = np.concatenate(self._rows, axis=0)
            for index, name in enumerate(self._features):
                part = summarize(matrix[:, index], self._distribution(name, output=False))
                self._feature_sums[name] = merge_pair(self._feature_sums[name], part)
        for name, values in self._outputs.items():
            distribution = self._distribution(name, output=True)
            part = summarize(values, distribution)
            previous = self._output_sums.get(name) or empty_summary(distribution)
            self._output_sums[name] = merge_pair(previous, part)
        self._rows = []
        self._buffered = 0
        self._outputs = {}

    def due(self, now: float) -> bool:
        return now >= self.window_start + self.window_s

    def summary(self, now: float) -> DriftReport:
        """Close the window at ``now``: return its report and start the next window."""
        self._fold()
        for name, missing in self._missing.items():
            if missing:
                summary = self._feature_sums[name]
                self._feature_sums[name] = summary.model_copy(
                    update={"missing": summary.missing + missing}
                )
        scores: dict[str, dict[str, float]] = {}
        levels: dict[str, Level] = {}
        for output, sums in ((False, self._feature_sums), (True, self._output_sums)):
            for name, summary in sums.items():
                distribution = self._distribution(name, output=output)
                if distribution is None:
                    continue
                found = score(summary, distribution)
                if not found:
                    continue
                scores[name] = {key: round(value, 6) for key, value in found.items()}
                if summary.count >= self.min_count:
                    levels[name] = level(found, self.thresholds)
        report = DriftReport(
            model=self.manifest.name,
            model_version=self.manifest.version,
            window_start=self.window_start,
            window_end=now,
            features=dict(self._feature_sums),
            outputs=dict(self._output_sums),
            scores=scores,
            levels=levels,
        )
        self.window_start = now
        self._reset()
        return report
