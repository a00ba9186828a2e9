"""Running the project's programs as real subprocesses, from this checkout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = {"edge-agent": "edge_agent", "edge-convert": "converters", "fleet": "fleet"}


def program_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def command(program: str, *args: str) -> list[str]:
    """``python -m <package>`` for a program of this checkout (the same code its script runs)."""
    return [sys.executable, "-m", PROGRAMS[program], *args]


def run(
    program: str, *args: str, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(program, *args),
        env=program_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{program} {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


class AgentProcess:
    """``edge-agent run --config PATH`` in the background, its log in ``log``."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        log_level: str = "INFO",
    ) -> None:
        self.config = config
        self.log = log
        self._env = env
        self._log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command(
                    "edge-agent",
                    "run",
                    "--config",
                    str(self.config),
                    "--log-level",
                    self._log_level,
                ),
                env=program_env(self._env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive():
                raise AssertionError(f"agent exited before logging {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"agent did not log {text!r} in {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()
