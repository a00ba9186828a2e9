"""The agent's error families, grouped by the reaction each one needs.

Adapters translate library exceptions (paho, asyncua, onnxruntime, sqlite3) into these with
``raise ... from err``; only supervisor loops catch ``Exception``.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "ConfigError",
    "EdgeError",
    "InputRejected",
    "ModelError",
    "NotReadyError",
    "OutboxError",
    "PartialWriteError",
    "PluginFatalError",
]

# sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a restart loop on bad config.
EXIT_CONFIG = 78


class EdgeError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(EdgeError):
    """Permanent: the configuration is wrong. Fix the file; retrying will not help."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.key = key
        where = path or "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class NotReadyError(EdgeError):
    """Transient: a peer (broker, PLC, disk) is not available now. Retry with backoff."""


class PluginFatalError(EdgeError):
    """Fatal for one source or sink: it stops, the rest of the agent keeps serving."""


class ModelError(EdgeError):
    """A model cannot be loaded, does not fit the configured features, or failed to run."""


class OutboxError(EdgeError):
    """The outbox cannot store or read records (disk full, database damaged)."""


class PartialWriteError(EdgeError):
    """A sink accepted only some records; ``accepted`` holds the ids it confirmed."""

    def __init__(self, message: str, accepted: list[int]) -> None:
        super().__init__(message)
        self.accepted = accepted


class InputRejected(EdgeError):
    """A sensor payload or sample was refused. ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
