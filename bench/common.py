"""What every benchmark reports: a figure, the baseline measured beside it, and their ratio."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["Figure", "print_table", "rss_mb", "time_per_call"]


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``ratio`` is figure / baseline; ``better`` says which way is good."""

    bench: str
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    better: str = "lower"  # "lower" (latency, memory) or "higher" (throughput)
    target: str = ""  # the target in words, e.g. ">= 0.8 x baseline"
    met: bool | None = None  # whether the target is met, when there is one

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


def time_per_call(call: Callable[[], object], *, min_time: float = 0.5, repeat: int = 5) -> float:
    """Best-of-``repeat`` seconds per call, each round running at least ``min_time`` seconds."""
    call()
    best = float("inf")
    for _ in range(repeat):
        count = 0
        started = time.perf_counter()
        while True:
            call()
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time / repeat:
                break
        best = min(best, elapsed / count)
    return best


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(figures: list[Figure], *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([asdict(f) | {"ratio": f.ratio} for f in figures], indent=2))
        return
    header = ("bench", "figure", "value", "baseline", "ratio", "target")
    rows = []
    for f in figures:
        baseline = ""
        if f.baseline is not None:
            baseline = f"{f.baseline:.4g} {f.unit} ({f.baseline_name})"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        target = f.target + ("" if f.met is None else (" ok" if f.met else " MISSED"))
        rows.append((f.bench, f.name, f"{f.value:.4g} {f.unit}", baseline, ratio, target))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
