"""The README's commands start: each script's --help answers from the prepared .venv."""

from __future__ import annotations

import subprocess

from tests.support.processes import REPO


def test_scripts_bench_hands_its_arguments_to_the_benchmark_runner() -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "bench"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: python -m bench" in result.stdout
    assert "--quick" in result.stdout
