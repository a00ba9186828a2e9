"""Buffers: where outbox records wait, durable, until a sink confirmed their delivery."""

from __future__ import annotations

from edge_agent.buffers.base import (
    AddResult,
    Buffer,
    BufferFull,
    BufferLimits,
    BufferOverflow,
    OutboxRecord,
    PendingRecord,
)
from edge_agent.buffers.memory import MemoryBuffer
from edge_agent.buffers.sqlite import OutboxCorrupt, SqliteBuffer, Synchronous

__all__ = [
    "AddResult",
    "Buffer",
    "BufferFull",
    "BufferLimits",
    "BufferOverflow",
    "MemoryBuffer",
    "OutboxCorrupt",
    "OutboxRecord",
    "PendingRecord",
    "SqliteBuffer",
    "Synchronous",
]
