"""Window builders: turn readings into the feature rows a model was trained on. Pure logic, no I/O.

Time comes in through the arguments (``now``), never from a clock read here, so that every
builder can be tested without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.errors import InputRejected
from edge_agent.sources.base import Reading

__all__ = ["RowWindowBuilder", "Window", "WindowBuilder"]


@dataclass(slots=True)
class Window:
    """One model input row for one asset, and the readings it was built from (to acknowledge)."""

    asset: str
    end: float  # seconds since the epoch: the window's end, or the reading's time
    values: list[float]  # in the model's feature order
    readings: list[Reading] = field(default_factory=list, repr=False)


class WindowBuilder(Protocol):
    """Builds windows from readings. Called from one task only; never blocks, never does I/O."""

    def add(self, reading: Reading, now: float) -> list[Window]:
        """Take one reading; return the windows it completed. Raise InputRejected to refuse it."""
        ...

    def poll(self, now: float) -> list[Window]:
        """Return windows that time alone completed (called periodically)."""
        ...


class RowWindowBuilder:
    """Each reading is one complete row: it must carry every feature. Extra tags are ignored."""

    def __init__(self, features: list[str]) -> None:
        if not features:
            raise ValueError("a model needs at least one feature")
        self.features = list(features)

    def add(self, reading: Reading, now: float) -> list[Window]:
        values = {sample.tag: sample.value for sample in reading.samples}
        missing = [name for name in self.features if name not in values]
        if missing:
            raise InputRejected(
                "missing_feature",
                f"missing {', '.join(missing)} (the model needs {', '.join(self.features)})",
            )
        end = max(sample.ts for sample in reading.samples)
        return [Window(reading.asset, end, [values[name] for name in self.features], [reading])]

    def poll(self, now: float) -> list[Window]:
        return []
