"""Running a local mosquitto broker: for the demo, for tests, and for trying things on a laptop."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "MosquittoProcess",
    "fetched_mosquitto_dir",
    "find_mosquitto",
    "free_port",
    "port_open",
]

INSTALL_HINT = (
    "the mosquitto broker is needed: install it with `apt-get install -y mosquitto` "
    "(Debian, Ubuntu, Raspberry Pi OS) or `brew install mosquitto` (macOS), "
    "or fetch it without root into .venv/mosquitto with `scripts/fetch-mosquitto`"
)

# A `user` line anywhere in a config: mosquitto then switches to that user itself.
_USER_LINE = re.compile(r"^\s*user\s", re.MULTILINE)


def fetched_mosquitto_dir() -> Path:
    """Where ``scripts/fetch-mosquitto`` unpacks the broker: ``mosquitto`` in the running venv."""
    return Path(sys.prefix) / "mosquitto"


def find_mosquitto() -> str | None:
    """The mosquitto binary, in this order: $MOSQUITTO_BIN if set (and nothing else then), on
    PATH or in the usual sbin folders, or the one ``scripts/fetch-mosquitto`` unpacked."""
    if "MOSQUITTO_BIN" in os.environ:
        chosen = os.environ["MOSQUITTO_BIN"]
        return chosen if os.access(chosen, os.X_OK) else None
    installed = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if installed is not None:
        return installed
    # The wrapper sets LD_LIBRARY_PATH to the unpacked libraries and execs the real binary.
    fetched = fetched_mosquitto_dir() / "bin" / "mosquitto"
    return str(fetched) if os.access(fetched, os.X_OK) else None


def _own_user() -> str:
    """A ``user`` line keeping mosquitto as the user running it.

    Started as root, mosquitto otherwise switches to the user ``mosquitto``, which cannot write
    the log and persistence files in a folder the invoking user made. Not root: mosquitto ignores
    the line.
    """
    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    except KeyError:  # a uid without a passwd entry (some containers): it cannot be root
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class MosquittoProcess:
    """One mosquitto on loopback, configured in ``directory``; can stop, restart and pause.

    ``extra_config`` lines are appended to its config (ACL files, password files, limits).
    It runs as the user running this, unless ``extra_config`` names a ``user``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        extra_config: str = "",
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.binary = found
        self.directory = directory
        self.port = port or free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("" if "allow_anonymous" in extra_config else "allow_anonymous true\n")
            + "persistence false\n"
            "set_tcp_nodelay true\n"
            # Offline persistent sessions keep this many QoS 1 messages (the default 1000 is small).
            "max_queued_messages 1000000\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + ("" if _USER_LINE.search(extra_config) else _own_user())
            + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until the port accepts connections."""
        if self.process is not None:
            raise RuntimeError("mosquitto is already running")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal reaches the program that owns the broker,
            # which stops it in its turn, not the broker in the middle of that program's work.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited at start: {log.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop (SIGTERM, then SIGKILL); the port is kept for a restart."""
        if self.process is None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
