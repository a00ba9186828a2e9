"""The real mosquitto for tests: skip (or fail under CI=true) with an install hint when missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.broker import INSTALL_HINT, MosquittoProcess, find_mosquitto, free_port, port_open

__all__ = [
    "Mosquitto",
    "free_port",
    "persistent_broker",
    "port_open",
    "require_mosquitto",
    "start_mosquitto",
]

Mosquitto = MosquittoProcess


def require_mosquitto() -> str:
    """The mosquitto binary; fails the run under CI=true when it is missing, else skips."""
    found = find_mosquitto()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


def start_mosquitto(directory: Path, extra_config: str = "") -> MosquittoProcess:
    server = MosquittoProcess(directory, binary=require_mosquitto(), extra_config=extra_config)
    server.start()
    return server


def persistent_broker(directory: Path) -> MosquittoProcess:
    """A broker that keeps sessions and queued messages across a restart (a file on disk)."""
    return start_mosquitto(
        directory, extra_config=f"persistence true\npersistence_location {directory}/\n"
    )
