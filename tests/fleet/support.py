"""Fleet test helpers: a `fleet serve` subprocess, bundles, and waiting for conditions."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edge_agent.contracts.bundle import (
    generate_keypair,
    load_private_key,
    read_bundle,
    write_bundle,
)
from tests.support.models import linear_bundle
from tests.support.processes import command, program_env

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def keypair(directory: Path) -> tuple[Path, Path]:
    private, public = generate_keypair()
    (directory / "fleet.key").write_bytes(private)
    (directory / "fleet.pub").write_bytes(public)
    return directory / "fleet.key", directory / "fleet.pub"


def signed_bundle(path: Path, key: Path, *, version: str, name: str = "linear") -> Path:
    """A tiny real ONNX bundle, signed with ``key``."""
    linear_bundle(path, name=name, version=version)
    bundle = read_bundle(path)
    write_bundle(path, bundle.manifest, bundle.files, load_private_key(key))
    return path


class FleetServe:
    """``fleet serve`` as a subprocess; its log in ``log``."""

    def __init__(
        self, base_args: list[str], log: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command("fleet", *base_args, "serve", "--tick", "0.2", *extra),
                env=program_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: "Fleet worker serving" in self.output() or self.process.poll() is not None,
            "fleet serve to subscribe",
            timeout,
        )
        assert self.process.poll() is None, self.output()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> FleetServe:
        self.wait_serving()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
