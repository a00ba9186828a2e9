"""Each program's --help names its subcommands."""

from __future__ import annotations

import pytest

from tests.support.processes import run


@pytest.mark.parametrize(
    ("program", "subcommands"),
    [
        ("edge-agent", ["run", "check-config", "sample-config", "once", "status"]),
        ("edge-convert", ["convert"]),
        ("fleet", ["devices"]),
    ],
)
def test_help_describes_subcommands(program: str, subcommands: list[str]) -> None:
    result = run(program, "--help", check=True)
    for subcommand in subcommands:
        assert subcommand in result.stdout
