"""The agent as a service: signals, config reload on SIGHUP, systemd notification, metrics.

``edge-agent run`` hands its config to :class:`AgentService`, which runs one :class:`Agent`
at a time:

- SIGTERM or SIGINT: ``STOPPING=1``, then the agent drains and stops; ``run`` returns.
- SIGHUP: the config file is read and validated again. If it is invalid the running agent keeps
  serving with its old config; each problem is logged with file, line and key and
  ``config.reload_refused`` is counted. If it is valid, ``RELOADING=1``, the agent drains and
  stops, and a new one starts on the new config in the same process (``READY=1`` again once
  its sources are subscribed). ``config.reloads`` counts the reloads done.
- systemd (``Type=notify``): ``READY=1`` once every source is subscribed, ``STATUS=`` lines
  with the live figures, and ``WATCHDOG=1`` only while inference is healthy: the model is
  loaded and no inference call has been running for longer than half the watchdog period. A
  stuck model therefore stops the pings and systemd restarts the service.
- ``[metrics] listen``: the Prometheus endpoint, kept across reloads (rebound if it changed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, MetricsConfig, check_config
from edge_agent.metrics import PrometheusEndpoint, render_metrics
from edge_agent.systemd import SystemdNotifier

__all__ = ["AgentService"]

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
STARTING_POLL_S = 0.1
# Counters the service keeps across the agents it runs (a reload starts a fresh agent).
CARRIED_COUNTERS = ("config.reloads", "config.reload_refused")


class AgentService:
    """Runs the agent until a stop signal. Construct (no I/O), then ``await run()``."""

    def __init__(
        self, config_path: Path, config: AgentConfig, notifier: SystemdNotifier | None = None
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.agent: Agent | None = None
        self.metrics: PrometheusEndpoint | None = None
        self._carried = dict.fromkeys(CARRIED_COUNTERS, 0.0)
        self._wakeup = asyncio.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._unhealthy_logged = False

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wakeup.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wakeup.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; raises what the agent raised if it failed."""
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            config: AgentConfig | None = self.config
            while config is not None and not self._stop_requested:
                # (A stop that came during a reload's drain ends here, before a new start.)
                await self._apply_metrics(config.metrics)
                self.config = config
                config = await self._serve(config)
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            if self.metrics is not None:
                await self.metrics.stop()
            self.notifier.close()

    async def _serve(self, config: AgentConfig) -> AgentConfig | None:
        """Run one agent until a stop (returns None) or a valid reload (returns the new config)."""
        agent = Agent(config)
        for name, value in self._carried.items():
            agent.health.count(name, value)
        self.agent = agent
        stop_agent = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            running = group.create_task(agent.run(stop_agent), name="agent")
            group.create_task(self._report(agent, running), name="systemd-notify")
            next_config = await self._next_request(agent)
            stop_agent.set()
        return next_config

    async def _next_request(self, agent: Agent) -> AgentConfig | None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stop_requested:
                logger.info("Stop requested")
                self.notifier.stopping("Stopping: draining windows and the outbox")
                return None
            if self._reload_requested:
                self._reload_requested = False
                new = await self._reread(agent)
                if new is not None:
                    return new

    async def _reread(self, agent: Agent) -> AgentConfig | None:
        """Validate the config file again; the new config, or None (and logged) if invalid."""
        path = self.config_path
        new, problems = await asyncio.to_thread(check_config, path)
        if new is None:
            self._carried["config.reload_refused"] += 1
            agent.health.count("config.reload_refused")
            logger.error(
                "Config reload refused: %d problem(s) in %s; still serving the running config",
                len(problems),
                path,
            )
            for problem in problems:
                logger.error("  %s", problem)
            self.notifier.status(f"Reload refused ({problems[0]}); serving the running config")
            return None
        self._carried["config.reloads"] += 1
        logger.info("Config reloaded from %s: restarting the pipeline on it", path)
        self.notifier.reloading(f"Reloading {path}: draining, then restarting the pipeline")
        return new

    async def _apply_metrics(self, wanted: MetricsConfig | None) -> None:
        current = self.metrics
        if current is not None and wanted is not None and current.address == wanted.listen:
            return
        if current is not None:
            await current.stop()
            self.metrics = None
        if wanted is not None:
            endpoint = PrometheusEndpoint(wanted.host, wanted.port, self._render_metrics)
            await endpoint.start()
            self.metrics = endpoint

    def _render_metrics(self) -> str:
        return render_metrics(self.agent) if self.agent is not None else ""

    # ------------------------------------------------------------------------------ systemd

    async def _report(self, agent: Agent, running: asyncio.Task[None]) -> None:
        """READY=1 once serving, then WATCHDOG=1 (while healthy) and STATUS= until it ends."""
        while not agent.serving.is_set():
            if running.done():
                return
            await asyncio.wait({running}, timeout=STARTING_POLL_S)
        self.notifier.ready(self._status_text(agent))
        watchdog = self.notifier.watchdog_interval_s
        tick = min(watchdog, STATUS_INTERVAL_S) if watchdog else STATUS_INTERVAL_S
        while not running.done():
            if watchdog is not None and self._inference_healthy(agent, watchdog):
                self.notifier.watchdog()
            if not self._stop_requested:
                self.notifier.status(self._status_text(agent))
            await asyncio.wait({running}, timeout=tick)

    def _inference_healthy(self, agent: Agent, stuck_after_s: float) -> bool:
        busy_since = agent.inference_busy_since
        busy_for = 0.0 if busy_since is None else time.monotonic() - busy_since
        healthy = agent.model is not None and busy_for < stuck_after_s
        if not healthy and not self._unhealthy_logged:
            logger.error(
                "Inference stuck for %.1f s: withholding the systemd watchdog ping", busy_for
            )
        elif healthy and self._unhealthy_logged:
            logger.info("Inference is answering again: watchdog pings resume")
        self._unhealthy_logged = not healthy
        return healthy

    @staticmethod
    def _status_text(agent: Agent) -> str:
        counters, gauges = agent.health.snapshot()
        model = agent.model.manifest.label if agent.model else "no model"
        rejects = sum(value for name, value in counters.items() if name.startswith("rejects."))
        return (
            f"Serving {model}: {counters.get('inference.windows', 0):g} windows, "
            f"{rejects:g} inputs refused, outbox {gauges.get('outbox.rows', 0):g} rows, "
            f"p99 {gauges.get('inference.p99_ms', 0):g} ms, "
            f"uplink {'connected' if agent.uplink.connected else 'disconnected'}"
        )
