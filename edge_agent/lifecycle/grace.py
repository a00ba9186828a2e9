"""The grace period after a swap: health gates that send the device back to the previous model.

Gates, each judged on the windows the new model answered since the swap:

- errors: failed windows / all windows above ``max_error_rate`` (judged from the first window);
- latency: p99 batch latency above ``latency_p99_ratio`` times the previous model's p99 and more
  than ``latency_floor_ms`` above it (judged from ``min_windows`` windows, when the previous
  model's p99 was measured on as many);
- outputs: the PSI of any numeric output against the bundle's baseline at or above the alert
  threshold (judged from ``output_min_windows`` windows, for outputs the baseline describes:
  over n values in k bins PSI is about k / n even without drift, so it needs a few hundred).

Pure logic fed from the event loop; the manager owns the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.contracts.baseline import Baseline, bin_counts
from edge_agent.contracts.drift import psi
from edge_agent.contracts.payloads import OutputValue
from edge_agent.health import LatencyWindow

__all__ = ["Grace", "GraceGates"]


@dataclass(frozen=True)
class GraceGates:
    max_error_rate: float
    min_windows: int
    output_min_windows: int
    latency_p99_ratio: float
    latency_floor_ms: float
    output_psi_alert: float


@dataclass
class Grace:
    """Health of a newly swapped-in model; ``failure`` names the first gate it broke."""

    gates: GraceGates
    baseline: Baseline | None
    previous_p99_ms: float | None
    windows: int = 0
    errors: int = 0
    failure: str | None = None
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    outputs: dict[str, list[float]] = field(default_factory=dict)
    _next_output_check: int = 0

    def answered(
        self, outputs: Sequence[Mapping[str, OutputValue]], latency_s: float
    ) -> str | None:
        """Record a batch the new model answered; return the failure, if this broke a gate."""
        self.windows += len(outputs)
        self.latency.add(latency_s)
        for row in outputs:
            for name, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.outputs.setdefault(name, []).append(float(value))
        if self.failure is None:
            self.failure = self._check_latency() or self._check_outputs(final=False)
        return self.failure

    def failed(self, windows: int) -> str | None:
        """Record windows the new model failed to answer."""
        self.errors += windows
        if self.failure is None:
            self.failure = self._check_errors()
        return self.failure

    def finish(self) -> str | None:
        """At the end of the grace period: the last judgement on every gate."""
        if self.failure is None:
            self.failure = (
                self._check_errors() or self._check_latency() or self._check_outputs(final=True)
            )
        return self.failure

    def _check_errors(self) -> str | None:
        total = self.windows + self.errors
        if total == 0:
            return None
        rate = self.errors / total
        if self.errors and rate > self.gates.max_error_rate:
            return (
                f"inference errors on {self.errors} of {total} windows ({rate:.1%}, limit "
                f"{self.gates.max_error_rate:.1%})"
            )
        return None

    def _check_latency(self) -> str | None:
        if self.previous_p99_ms is None or self.windows < self.gates.min_windows:
            return None
        _p50, p99 = self.latency.percentiles_ms()
        limit = self.previous_p99_ms * self.gates.latency_p99_ratio
        if p99 > limit and p99 - self.previous_p99_ms > self.gates.latency_floor_ms:
            return (
                f"latency p99 {p99:.3f} ms against {self.previous_p99_ms:.3f} ms for the "
                f"previous model (limit {self.gates.latency_p99_ratio:g}x)"
            )
        return None

    def _check_outputs(self, *, final: bool) -> str | None:
        if self.baseline is None or self.windows < self.gates.output_min_windows:
            return None
        # Judged each time the window count doubles, and at the end: PSI over a growing sample.
        if not final and self.windows < self._next_output_check:
            return None
        self._next_output_check = self.windows * 2
        for name, values in sorted(self.outputs.items()):
            distribution = self.baseline.outputs.get(name)
            if distribution is None:
                continue
            finite = np.asarray(values, dtype=np.float64)
            counts = bin_counts(distribution.edges, finite)
            if sum(counts) < self.gates.output_min_windows:
                continue
            value = psi(counts, distribution.fractions)
            if value >= self.gates.output_psi_alert:
                return (
                    f"output {name} is out of distribution: PSI {value:.3f} against the "
                    f"baseline (limit {self.gates.output_psi_alert:g})"
                )
        return None
