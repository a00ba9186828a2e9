"""The systemd units: what they promise, `systemd-analyze verify` and the security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.tools import require_tool

UNITS = REPO / "deploy" / "systemd"
MAX_EXPOSURE = 2.0


def _settings(unit: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value, in order (systemd keys may repeat)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", ["edge-agent", "fleet-manager"])
def test_unit_declares_notify_restart_policy_directories_and_hardening(name: str) -> None:
    s = _settings(UNITS / f"{name}.service")

    def one(key: str) -> str:
        values = s[("Service", key)]
        assert len(values) == 1, f"{key} is set {len(values)} times"
        return values[0]

    assert one("Type") == "notify"
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "78"
    assert one("User") == one("Group") == name
    assert one("StateDirectory") == one("ConfigurationDirectory") == name
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == ""
    assert s[("Install", "WantedBy")] == ["multi-user.target"]


def test_agent_unit_runs_the_agent_on_the_installed_config_and_reloads_with_sighup() -> None:
    s = _settings(UNITS / "edge-agent.service")
    assert s[("Service", "WatchdogSec")] == ["30"]
    assert s[("Service", "LoadCredential")] == ["mqtt-password:edge-agent.mqtt-password"]
    assert s[("Service", "ExecStart")] == [
        "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"
    ]
    assert s[("Service", "ExecReload")] == ["/bin/kill -HUP $MAINPID"]


def test_manager_unit_hands_fleet_serve_its_broker_password_as_a_credential() -> None:
    s = _settings(UNITS / "fleet-manager.service")
    assert s[("Service", "LoadCredential")] == ["mqtt-password:fleet-manager.mqtt-password"]
    # The credential's name comes from fleet.env (FLEET_PASSWORD_CREDENTIAL), so an anonymous
    # broker needs no credential file and the command line stays the same.
    assert s[("Service", "ExecStart")] == [
        "/opt/edge-agent/venv/bin/fleet serve --client-id fleet-manager-%H"
    ]
    assert s[("Service", "EnvironmentFile")] == ["-/etc/fleet-manager/fleet.env"]


@pytest.mark.parametrize("name", ["edge-agent", "fleet-manager"])
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's program exists: point it at this checkout's venv, the
    # same console script the installer puts under /opt/edge-agent/venv/bin.
    program = "edge-agent" if name == "edge-agent" else "fleet"
    here = Path(sys.executable).parent / program
    if not here.exists():
        here = Path(shutil.which(program) or program)
    assert here.is_file(), f"no {program} console script found to stand in for the installed one"
    unit = tmp_path / f"{name}.service"
    text = (UNITS / f"{name}.service").read_text()
    unit.write_text(text.replace(f"/opt/edge-agent/venv/bin/{program}", str(here)))
    verified = subprocess.run(
        [analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    problems = [line for line in verified.stderr.splitlines() if name in line]
    assert not problems, problems


@pytest.mark.parametrize("name", ["edge-agent", "fleet-manager"])
def test_systemd_analyze_security_exposure_is_2_or_better(name: str) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNITS / f"{name}.service")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
