"""The demo's plant: pumps served over OPC-UA as a PLC would, their bearings wearing over time.

An asyncua server on the demo's own event loop, one object per pump (``ns=2;s=<pump>.<tag>``)
with the tags ``temperature``, ``vibration`` and ``pressure``, written every ``interval_s`` from
the same pump model the agent's simulated source uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from asyncua import ua
from asyncua.server.server import Server

from edge_agent.sources.simulated import PUMP_TAGS, pump_values

__all__ = ["PumpPlant"]

NAMESPACE = "urn:edge-inference:demo-plant"


class PumpPlant:
    """Pumps on an OPC-UA server. Construct (no I/O), ``start``, ``run`` until stopped, ``stop``.

    ``wear_periods`` gives each pump's time from a new bearing to a worn one, in seconds; a
    very long period keeps a pump healthy for the whole demo.
    """

    def __init__(self, port: int, wear_periods: dict[str, float], interval_s: float = 0.25) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.wear_periods = wear_periods
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
        for pump in self.wear_periods:
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

    def wear(self, pump: str, elapsed_s: float) -> float:
        period = self.wear_periods[pump]
        return (elapsed_s % period) / period

    async def run(self, stop: asyncio.Event) -> None:
        """Write every pump's tags each ``interval_s`` until ``stop`` is set."""
        started = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            for pump, period in self.wear_periods.items():
                values = pump_values(elapsed, period, self._rng)
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
