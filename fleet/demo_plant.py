"""The demo's plant: pumps served over OPC-UA as a PLC would, their bearings wearing over time.

An asyncua server on the demo's own event loop, one object per pump (``ns=2;s=<pump>.<tag>``)
with the tags ``temperature``, ``vibration`` and ``pressure``, written every ``interval_s``.
A worn bearing runs hotter and shakes more; pressure swings slowly whatever the wear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import Any

from asyncua import ua
from asyncua.server.server import Server

__all__ = ["PUMP_TAGS", "PumpPlant", "Wear", "pump_reading"]

PUMP_TAGS = ("temperature", "vibration", "pressure")

NAMESPACE = "urn:edge-inference:demo-plant"


def pump_reading(wear: float, t: float, rng: random.Random) -> dict[str, float]:
    """One reading of a pump whose bearing is ``wear`` (0 new, 1 worn out) at time ``t``."""
    return {
        "temperature": 65.0 + 15.0 * wear + rng.gauss(0, 0.5),
        "vibration": 0.3 + 2.5 * wear**2 + abs(rng.gauss(0, 0.03)),
        "pressure": 5.0 + 0.2 * math.sin(t / 7.0) + rng.gauss(0, 0.05),
    }


class Wear:
    """A bearing that runs like new for ``healthy_s``, wears out over ``wear_s``, is replaced."""

    def __init__(self, healthy_s: float, wear_s: float) -> None:
        self.healthy_s = healthy_s
        self.wear_s = wear_s

    def at(self, elapsed_s: float) -> float:
        into = elapsed_s % (self.healthy_s + self.wear_s) - self.healthy_s
        return min(1.0, max(0.0, into / self.wear_s))


class PumpPlant:
    """Pumps on an OPC-UA server. Construct (no I/O), ``start``, ``run`` until stopped, ``stop``.

    ``pumps`` names each pump and how its bearing wears.
    """

    def __init__(self, port: int, pumps: dict[str, Wear], interval_s: float = 0.25) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.pumps = pumps
        self.interval_s = interval_s
        self.namespace_index = 2
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], Any] = {}
        self._rng = random.Random(7)

    def node_id(self, pump: str, tag: str) -> str:
        return f"ns={self.namespace_index};s={pump}.{tag}"

    async def start(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("edge-inference demo plant")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.namespace_index = await server.register_namespace(NAMESPACE)
        for pump in self.pumps:
            folder = await server.nodes.objects.add_object(
                f"ns={self.namespace_index};s={pump}", pump
            )
            for tag in PUMP_TAGS:
                self._nodes[(pump, tag)] = await folder.add_variable(
                    self.node_id(pump, tag),
                    tag,
                    ua.Variant(0.0, ua.VariantType.Double),
                )
        await server.start()
        self._server = server

    async def run(self, stop: asyncio.Event) -> None:
        """Write every pump's tags each ``interval_s`` until ``stop`` is set."""
        started = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            for pump, wear in self.pumps.items():
                values = pump_reading(wear.at(elapsed), elapsed, self._rng)
                for tag, value in values.items():
                    await self._nodes[(pump, tag)].write_value(
                        ua.Variant(float(value), ua.VariantType.Double)
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
