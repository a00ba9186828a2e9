"""The agent's counters and gauges: what the heartbeat, ``edge-agent status`` and metrics report.

Names are flat and dotted (``rejects.not_json``, ``outbox.rows``) so that dashboards and
Prometheus can use them as they are. Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable

import numpy as np

__all__ = ["Health", "LatencyWindow"]

logger = logging.getLogger(__name__)


class LatencyWindow:
    """The last ``size`` latencies, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles_ms(self) -> tuple[float, float]:
        if not self._values:
            return (0.0, 0.0)
        p50, p99 = np.percentile(np.fromiter(self._values, float), [50, 99])
        return (float(p50) * 1000, float(p99) * 1000)


class Health:
    """Counters, gauges and once-per-kind problem logging for one agent."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counters: defaultdict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.inference = LatencyWindow()
        self._gauge_readers: dict[str, Callable[[], float]] = {}
        self._logged_kinds: set[str] = set()

    def count(self, name: str, amount: float = 1) -> None:
        self.counters[name] += amount

    def gauge(self, name: str, reader: Callable[[], float]) -> None:
        """Register a gauge read each time a snapshot is taken."""
        self._gauge_readers[name] = reader

    def reject(self, reason: str, origin: str, detail: str) -> None:
        """Count a refused input by reason; log the first of each reason with where it came from."""
        self.counters[f"rejects.{reason}"] += 1
        if reason not in self._logged_kinds:
            self._logged_kinds.add(reason)
            logger.warning(
                "Refused input from %s (%s): %s. Further %s refusals are counted, not logged.",
                origin,
                reason,
                detail,
                reason,
            )

    def problem_once(self, kind: str, message: str, *args: object) -> None:
        """Log a problem the first time it happens; later ones only go to counters."""
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            logger.warning(message, *args)

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """(counters, gauges) as plain dicts, gauges read now."""
        gauges = dict(self.gauges)
        for name, reader in self._gauge_readers.items():
            gauges[name] = float(reader())
        p50, p99 = self.inference.percentiles_ms()
        gauges["inference.p50_ms"] = round(p50, 4)
        gauges["inference.p99_ms"] = round(p99, 4)
        gauges["uptime_s"] = round(time.monotonic() - self.started, 3)
        return dict(self.counters), gauges
