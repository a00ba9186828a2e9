"""Shadow runs: the candidate answers the same live windows as the serving model, unseen.

Only the agreement is kept: a row agrees when every output both models give is equal (text) or
within tolerance (numbers). The tolerance of an output is the candidate's golden tolerance when
its bundle has one, else :data:`DEFAULT_ABS` plus :data:`DEFAULT_REL` of the serving value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.contracts.payloads import OutputValue

__all__ = ["ShadowRun", "agreeing_rows"]

DEFAULT_ABS = 1e-4
DEFAULT_REL = 1e-3
# Batches waiting for the candidate; past this the oldest are skipped (counted): a shadow run is
# a sample, and it must never hold the serving path back.
MAX_PENDING_BATCHES = 64


def _agree(a: OutputValue, b: OutputValue, tolerance: float | None) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    limit = tolerance if tolerance is not None else DEFAULT_ABS + DEFAULT_REL * abs(float(a))
    return abs(float(a) - float(b)) <= limit


def agreeing_rows(
    serving: Sequence[Mapping[str, OutputValue]],
    candidate: Sequence[Mapping[str, OutputValue]],
    tolerance: Mapping[str, float],
) -> int:
    """How many rows agree on every output name the two models share (none shared: none agree)."""
    agreeing = 0
    for old, new in zip(serving, candidate, strict=True):
        shared = set(old) & set(new)
        if shared and all(_agree(old[n], new[n], tolerance.get(n)) for n in shared):
            agreeing += 1
    return agreeing


@dataclass
class ShadowRun:
    """The state of one shadow run. Fed on the event loop; compared on the lifecycle worker."""

    windows_wanted: int
    tolerance: dict[str, float]
    pending: deque[tuple[npt.NDArray[np.float32], list[dict[str, OutputValue]]]] = field(
        default_factory=deque
    )
    windows: int = 0
    agreeing: int = 0
    skipped: int = 0

    def offer(self, rows: npt.NDArray[np.float32], outputs: list[dict[str, OutputValue]]) -> None:
        """Queue a batch the serving model answered (event loop)."""
        if len(self.pending) >= MAX_PENDING_BATCHES:
            dropped_rows, _ = self.pending.popleft()
            self.skipped += dropped_rows.shape[0]
        self.pending.append((rows, outputs))

    def record(self, windows: int, agreeing: int) -> None:
        self.windows += windows
        self.agreeing += agreeing

    @property
    def done(self) -> bool:
        return self.windows >= self.windows_wanted

    @property
    def agreement(self) -> float:
        return self.agreeing / self.windows if self.windows else 0.0
