"""Ctrl-C or SIGTERM at any moment of the demo: everything it started stops, exit 128 + signal.

The demo runs as a real subprocess in its own process group and gets the signal the way a
terminal sends Ctrl-C: to the whole foreground group. What it started is found afterwards by a
marker in the environment that every descendant inherits, read from /proc.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.support.mosquitto import require_mosquitto
from tests.support.processes import command, program_env

MARKER = "EDGE_DEMO_STOP_TEST"
RESULT_ROW = re.compile(r"^\s*\d+\.\d\s+pump-\d")
# Hang guards only, far beyond what any step takes: a stuck demo fails instead of blocking CI.
HANG_GUARD_S = 300.0


def _processes_marked(token: str) -> list[str]:
    """Command lines of the live processes carrying ``MARKER=token`` in their environment."""
    marker = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


class DemoRun:
    """``fleet demo`` in its own process group, its output read line by line as it comes."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.token = uuid.uuid4().hex
        self.workdir = workdir
        self.stderr_path = workdir.parent / f"{workdir.name}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                command("fleet", "demo", "--workdir", str(workdir)),
                env=program_env({MARKER: self.token, **(env or {})}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: re.Pattern[str] | str) -> None:
        """Read output until a line matches; fails if the demo ends first."""
        while True:
            line = self._queue.get(timeout=HANG_GUARD_S)
            if line is None:
                pytest.fail(f"the demo ended before {predicate!r}:\n{self.output()}")
            self.lines.append(line)
            if (predicate in line) if isinstance(predicate, str) else predicate.search(line):
                return

    def interrupt(self, signum: int = signal.SIGINT) -> int:
        """Send ``signum`` as a terminal does (to the process group); the exit code."""
        os.killpg(self.process.pid, signum)
        code = self.process.wait(timeout=HANG_GUARD_S)
        while (line := self._queue.get(timeout=HANG_GUARD_S)) is not None:
            self.lines.append(line)
        return code

    def output(self) -> str:
        return "".join(self.lines)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.workdir.glob("*.log"))


def _assert_stopped_cleanly(demo: DemoRun, code: int, signum: int) -> None:
    everything = demo.output() + demo.stderr()
    assert code == 128 + signum, everything
    assert "Traceback" not in everything
    assert "Traceback" not in demo.logs()
    assert "everything the demo started has stopped" in demo.output(), everything
    assert _processes_marked(demo.token) == []


def _assert_stopped_in_reverse_order(demo: DemoRun) -> None:
    """The broker saw the agent, then the fleet manager, leave cleanly: each stopped in its turn
    while the broker, started first, was still up."""
    log = (demo.workdir / "broker" / "mosquitto.log").read_text()
    agent = log.find("Client edge-agent-pump-gateway-1 disconnected.")
    manager = re.search(r"Client fleet-serve-\w+ disconnected\.", log)
    assert agent >= 0, log
    assert manager is not None, log
    assert agent < manager.start(), log


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase",
    [
        "[2/6] training",  # keygen and edge-convert running in the foreground
        "[5/6] edge-agent",  # the agent starting, beside fleet serve and the OPC-UA plant
    ],
)
def test_ctrl_c_while_the_demo_starts_stops_everything(tmp_path: Path, phase: str) -> None:
    require_mosquitto()
    demo = DemoRun(tmp_path / "demo")
    demo.wait_for(phase)
    code = demo.interrupt(signal.SIGINT)
    _assert_stopped_cleanly(demo, code, signal.SIGINT)
    assert "stopped by Ctrl-C" in demo.output()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")], ids=str
)
def test_a_signal_in_the_live_view_shows_the_fleet_report_then_stops(
    tmp_path: Path, signum: signal.Signals, name: str
) -> None:
    require_mosquitto()
    demo = DemoRun(tmp_path / "demo")
    demo.wait_for(RESULT_ROW)
    code = demo.interrupt(signum)
    _assert_stopped_cleanly(demo, code, signum)  # exit 130 after Ctrl-C, 143 after SIGTERM
    assert f"stopped by {name}" in demo.output()
    assert "the fleet's registry" in demo.output()  # the live view ended as --duration ends it
    _assert_stopped_in_reverse_order(demo)


def test_without_a_broker_the_demo_says_how_to_get_one(tmp_path: Path) -> None:
    demo = subprocess.run(
        command("fleet", "demo", "--workdir", str(tmp_path / "demo")),
        env=program_env(
            {
                "MOSQUITTO_BIN": str(tmp_path / "no-such-mosquitto"),
                "PATH": os.path.dirname(sys.executable),
            }
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert demo.returncode == 1
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "apt-get install mosquitto" in demo.stderr
    assert "scripts/fetch-mosquitto" in demo.stderr
    assert "is not an executable file" in demo.stderr
