"""Talking to systemd: the sd_notify datagram protocol over ``$NOTIFY_SOCKET``, spoken directly.

A service with ``Type=notify`` tells systemd when it is ready (``READY=1``), that it is alive
(``WATCHDOG=1``, at least once per ``WatchdogSec=``), that it reloads (``RELOADING=1``) or stops
(``STOPPING=1``), and a one-line human status (``STATUS=``, shown by ``systemctl status``). Each
message is one datagram of newline-separated ``KEY=VALUE`` lines sent to the unix socket systemd
names in ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the agent runs the same way in
a terminal. A failed send is logged once and never stops the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

logger = logging.getLogger(__name__)

# systemd truncates STATUS= at its own limit; keep ours well below a datagram's size anyway.
MAX_STATUS_CHARS = 400


class SystemdNotifier:
    """Sends sd_notify messages. Construct from the environment; no I/O until the first send.

    Calls are synchronous, cheap (one ``sendto`` on a local datagram socket) and made from the
    event loop's thread.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        self.watchdog_interval_s = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (``$NOTIFY_SOCKET`` names a socket)."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True if it went out (False outside systemd)."""
        if self._address is None:
            return False
        message = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as err:
            if not self._failed:
                self._failed = True
                logger.warning("Cannot notify systemd at $NOTIFY_SOCKET: %s", err)
            return False
        if self._failed:
            self._failed = False
            logger.info("Notifying systemd works again")
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", _status_line(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.notify(_status_line(status))

    def reloading(self, status: str) -> bool:
        return self.notify("RELOADING=1", _status_line(status))

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", _status_line(status))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status_line(status: str) -> str:
    text = " ".join(status.split())  # one line: systemd shows it as is
    if len(text) > MAX_STATUS_CHARS:
        text = text[: MAX_STATUS_CHARS - 3] + "..."
    return f"STATUS={text}"


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WatchdogSec=`` (systemd's advice), or None when no watchdog applies to us.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the environment must not ping on its parent's behalf.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
