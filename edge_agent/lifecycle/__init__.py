"""The model lifecycle on the device: store, commands, activation, shadow runs, grace, rollback."""

from edge_agent.lifecycle.manager import ModelLifecycle, Serving
from edge_agent.lifecycle.store import ActivePointer, ModelStore

__all__ = ["ActivePointer", "ModelLifecycle", "ModelStore", "Serving"]
