"""Sinks: where outbox records are delivered."""

from __future__ import annotations

from edge_agent.sinks.base import Sink
from edge_agent.sinks.mqtt import MqttSink

__all__ = ["MqttSink", "Sink"]
