"""The progress display of a conversion: one line per step with the time it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Prints ``[3/8] converting to ONNX ... 1.4 s`` on ``stream`` (stderr by default).

    Steps are announced before they run, so a slow step (TensorFlow's import, a TFLite
    conversion, static calibration) shows what the converter is busy with. Disabled, it is silent.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._total = total
        self._done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled

    def extend(self, steps: int) -> None:
        """Count ``steps`` more, once the work ahead is known."""
        self._total += steps

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self._done += 1
        self._write(f"[{self._done}/{max(self._total, self._done)}] {what} ... ")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._write("failed\n")
            raise
        self._write(f"{time.perf_counter() - started:.1f} s\n")

    def note(self, text: str) -> None:
        self._write(f"      {text}\n")

    def _write(self, text: str) -> None:
        if self._enabled:
            self._stream.write(text)
            self._stream.flush()
