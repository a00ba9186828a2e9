"""A real unix datagram socket standing in for systemd's $NOTIFY_SOCKET, collecting messages."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """Binds a datagram socket in a short temporary directory (unix paths are short)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="sd-")
        self.path = Path(self._dir.name) / "notify"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self.messages: list[dict[str, str]] = []

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _receive(self, timeout: float) -> None:
        self._socket.settimeout(max(timeout, 0.001))
        try:
            data = self._socket.recv(65536)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)

    def wait_for(
        self,
        predicate: Callable[[dict[str, str]], bool],
        timeout: float = 30.0,
        *,
        after: int = 0,
    ) -> dict[str, str]:
        """The first message from index ``after`` on (received or arriving) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such message in {timeout} s; got {self.messages[-5:]}")
            self._receive(min(remaining, 0.5))

    def collect(self, seconds: float) -> list[dict[str, str]]:
        """Everything that arrives in the next ``seconds``."""
        start = len(self.messages)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive(remaining)
        return self.messages[start:]

    def close(self) -> None:
        self._socket.close()
        self._dir.cleanup()
