"""Simulated source: a pump whose bearing wears, or a CSV replayed, for demos and tests."""

from __future__ import annotations

import asyncio
import csv
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError
from edge_agent.sources.base import Reading, Sample

if TYPE_CHECKING:
    from edge_agent.config import SimulatedSourceConfig
    from edge_agent.health import Health

__all__ = ["SimulatedSource", "pump_values", "read_csv_rows"]

PUMP_TAGS = ("temperature", "vibration", "pressure")


def pump_values(elapsed_s: float, wear_period_s: float, rng: random.Random) -> dict[str, float]:
    """One pump reading. Wear goes 0 -> 1 over ``wear_period_s`` and then starts over (a new
    bearing); vibration grows with the square of wear and temperature follows it."""
    wear = (elapsed_s % wear_period_s) / wear_period_s
    return {
        "temperature": 65.0 + 15.0 * wear + rng.gauss(0, 0.5),
        "vibration": 0.3 + 2.5 * wear**2 + abs(rng.gauss(0, 0.03)),
        "pressure": 5.0 + 0.2 * math.sin(elapsed_s / 7.0) + rng.gauss(0, 0.05),
    }


def read_csv_rows(path: str) -> list[dict[str, float]]:
    """Rows of a CSV with a header of tag names; a ``ts`` column is dropped. ConfigError names the
    line of any cell that is not a number."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for line, row in enumerate(reader, start=2):
                values = {}
                for tag, cell in row.items():
                    if tag is None or tag == "ts":
                        continue
                    try:
                        values[tag] = float(cell)
                    except (TypeError, ValueError):
                        raise ConfigError(
                            f"{path}:{line}: column {tag} holds {cell!r}, not a number",
                            key="sources.csv",
                        ) from None
                rows.append(values)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err}", key="sources.csv") from err
    if not rows:
        raise ConfigError(f"{path} holds no rows", key="sources.csv")
    return rows


class SimulatedSource:
    """One reading of every tag each ``interval_s``, stamped with the time it is made."""

    def __init__(self, config: SimulatedSourceConfig, health: Health) -> None:
        self.name = config.name
        self._config = config
        self._health = health
        self._rows = read_csv_rows(str(config.csv)) if config.csv is not None else None
        self._state = "connecting"

    @property
    def state(self) -> str:
        return self._state

    async def start(self) -> None:
        self._state = "connected"

    async def wait_ready(self, timeout: float) -> bool:
        return True

    async def stop(self) -> None:
        self._state = "stopped"

    def _values(self) -> Iterator[dict[str, float]]:
        config = self._config
        if self._rows is not None:
            while True:
                yield from self._rows
                if not config.loop:
                    return
        rng = random.Random(config.seed)
        started = time.monotonic()
        while True:
            yield pump_values(time.monotonic() - started, config.wear_period_s, rng)

    async def readings(self) -> AsyncIterator[list[Reading]]:
        config = self._config
        next_at = time.monotonic()
        for values in self._values():
            now = time.time()
            samples = [Sample(tag, value, now) for tag, value in values.items()]
            self._health.count(f"source.{self.name}.samples", len(samples))
            yield [Reading(self.name, config.asset, f"simulated {self.name}", samples)]
            next_at += config.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        self._state = "finished"
        await asyncio.Event().wait()  # a finished replay stays quiet until the agent stops
