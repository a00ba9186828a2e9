"""The optional Prometheus endpoint: the agent's counters and gauges as text on ``GET /metrics``.

A deliberately small HTTP/1.1 server on the agent's own event loop (no thread, no dependency):
it answers one request per connection and reads the counters on the loop's thread, where they
are written. Names follow the health module's dotted names: ``rejects.not_json`` becomes
``edge_agent_rejects_not_json_total`` (a counter) and ``outbox.rows`` becomes
``edge_agent_outbox_rows`` (a gauge). Every sample carries ``device`` and ``site`` labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["CONTENT_TYPE", "PrometheusEndpoint", "metric_name", "render_metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edge_agent_"
REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_LINES = 100

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str, *, counter: bool) -> str:
    """The Prometheus name of a health counter or gauge."""
    base = PREFIX + _NOT_NAME.sub("_", name)
    return base + "_total" if counter else base


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_label_value(value)}"' for key, value in labels.items()) + "}"


def render_metrics(agent: Agent) -> str:
    """The exposition text for one agent, read now (on the event loop's thread)."""
    counters, gauges = agent.health.snapshot()
    device = agent.config.device
    base = {"device": device.id, "site": device.site}
    model = agent.model
    info = _labels(
        **base,
        version=__version__,
        model=model.manifest.name if model else "",
        model_version=model.manifest.version if model else "",
    )
    lines = [
        f"# HELP {PREFIX}info The agent's version and the model it serves.",
        f"# TYPE {PREFIX}info gauge",
        f"{PREFIX}info{info} 1",
        f"# HELP {PREFIX}uplink_connected 1 while the results broker is connected.",
        f"# TYPE {PREFIX}uplink_connected gauge",
        f"{PREFIX}uplink_connected{_labels(**base)} {int(agent.uplink.connected)}",
        f"# HELP {PREFIX}source_state Each source's state (the state label), always 1.",
        f"# TYPE {PREFIX}source_state gauge",
    ]
    for source in agent.sources:
        labels = _labels(**base, source=source.name, state=source.state)
        lines.append(f"{PREFIX}source_state{labels} 1")
    labels = _labels(**base)
    for name, value in sorted(counters.items()):
        full = metric_name(name, counter=True)
        lines += [f"# TYPE {full} counter", f"{full}{labels} {value:g}"]
    for name, value in sorted(gauges.items()):
        full = metric_name(name, counter=False)
        lines += [f"# TYPE {full} gauge", f"{full}{labels} {value:g}"]
    return "\n".join(lines) + "\n"


class PrometheusEndpoint:
    """Serves ``render()`` on ``GET /metrics``. Construct (validates), then ``start``/``stop``.

    ``start`` binds the port (a ConfigError names the address if it cannot); both run on the
    event loop. ``render`` is called on the loop for each scrape.
    """

    def __init__(self, host: str, port: int, render: Callable[[], str]) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"port {port} is out of range")
        self.host = host
        self.port = port
        self._render = render
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._answer, self.host, self.port)
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {self.address}: {err.strerror or err}", key="metrics.listen"
            ) from err
        if self.port == 0:  # a free port was asked for: report the one the system chose
            self.port = self._server.sockets[0].getsockname()[1]
        logger.info("Prometheus metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
                for _ in range(MAX_HEADER_LINES):
                    if (await reader.readline()).strip() == b"":
                        break
            parts = request.decode("latin-1").split()
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                self._respond(writer, 405, "text/plain", b"only GET /metrics is served\n")
            elif parts[1].split("?")[0] not in ("/metrics", "/"):
                self._respond(writer, 404, "text/plain", b"not found: try /metrics\n")
            else:
                body = self._render().encode()
                self._respond(writer, 200, CONTENT_TYPE, b"" if parts[0] == "HEAD" else body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # a scraper that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, code: int, content_type: str, body: bytes) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[code]
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
