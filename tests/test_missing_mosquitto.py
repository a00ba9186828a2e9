"""Without mosquitto, broker tests fail with an install hint under CI=true and skip otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, program_env


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("false", "1 skipped")])
def test_broker_fixture_without_mosquitto(tmp_path: Path, ci: str, outcome: str) -> None:
    test_file = tmp_path / "test_needs_broker.py"
    test_file.write_text("def test_broker(broker):\n    assert broker.port\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-p",
            "tests.conftest",
            "-rs",
            "--rootdir",
            str(REPO),
            "-c",
            str(REPO / "pyproject.toml"),
        ],
        env=program_env({"CI": ci, "MOSQUITTO_BIN": str(tmp_path / "no-such-mosquitto")}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in result.stdout, result.stdout
    assert "apt-get install -y mosquitto" in result.stdout
