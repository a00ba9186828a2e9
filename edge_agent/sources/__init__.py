"""Sources: where samples come from; one module per technology, built by ``build_source``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.sources.base import Quality, Reading, Sample, Source

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, SourceConfig
    from edge_agent.health import Health

__all__ = ["Quality", "Reading", "Sample", "Source", "build_source"]


def build_source(
    config: SourceConfig, agent: AgentConfig, health: Health, shared: dict[str, Any]
) -> Source:
    """The one registry from a source's config ``type`` to its class.

    Each branch imports its module only when that type is configured, so an optional dependency is
    needed only by the agents that use it. ``shared`` holds what the sources of one agent share
    (one OPC-UA session per server URL); the agent makes it and keeps it for its lifetime.
    """
    if config.type == "mqtt":
        from edge_agent.sources.mqtt import MqttSource

        return MqttSource(config, agent, health, once=shared.get("mode") == "once")
    if config.type == "opcua":
        from edge_agent.sources.opcua import OpcUaSource

        return OpcUaSource(config, agent, health, shared)
    if config.type == "simulated":
        from edge_agent.sources.simulated import SimulatedSource

        return SimulatedSource(config, health)
    raise AssertionError(f"unhandled source type {config.type!r}")  # config validation prevents it
