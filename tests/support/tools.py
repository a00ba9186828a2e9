"""Tools and heavy modules some tests need (shellcheck, systemd-analyze, torch, TensorFlow):
skip without them on a workstation, fail under CI=true, where .ci/run installs them all."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest


def _missing(hint: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(hint, pytrace=False)
    pytest.skip(hint, allow_module_level=True)


def require_tool(name: str, package: str) -> str:
    """The tool's path; under CI=true a missing tool fails the test (.ci/run installs it)."""
    found = shutil.which(name)
    if found is None:
        _missing(f"{name} is not installed (apt-get install {package}; .ci/run installs it)")
    return found


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name``; a missing module skips the test (fails it under CI=true)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"{name} is not installed (pip install -e '.[{extra}]'; scripts/test installs it)")
