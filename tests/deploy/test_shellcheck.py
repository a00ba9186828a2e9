"""Every shell script of the project passes shellcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import REPO
from tests.support.tools import require_tool

FOLDERS = ["deploy", "scripts", ".ci"]


def shell_scripts() -> list[Path]:
    """Files under FOLDERS that start with a sh/bash shebang or a shellcheck shell directive."""
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file():
                continue
            with path.open("rb") as handle:
                first = handle.readline()
            shebang = first.startswith(b"#!") and b"sh" in first.split(b"/")[-1]
            if shebang or first.startswith(b"# shellcheck shell="):
                found.append(path)
    return found


def test_the_scripts_are_found() -> None:
    names = {str(path.relative_to(REPO)) for path in shell_scripts()}
    assert {"deploy/install.sh", "scripts/test", "scripts/demo", ".ci/run"} <= names
    assert "scripts/fetch-mosquitto" in names
    assert "scripts/lib/venv.sh" in names


def test_shellcheck_is_clean() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = [str(path) for path in shell_scripts()]
    result = subprocess.run(
        [shellcheck, "--external-sources", *scripts],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
