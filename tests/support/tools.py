"""System tools some tests need (shellcheck, systemd-analyze): skip without them, fail under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """The tool's path; under CI=true a missing tool fails the test (.ci/run installs it)."""
    found = shutil.which(name)
    if found is None:
        hint = f"{name} is not installed (apt-get install {package}; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(hint, pytrace=False)
        pytest.skip(hint)
    return found
