"""deploy/install.sh against a scratch root: installs, runs twice to the same state, keeps the
operator's config, uninstalls (keeping data unless --purge) and leaves nothing of ours."""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO

INSTALL = REPO / "deploy" / "install.sh"
VENV = Path("opt/edge-agent/venv")
# What a Debian system has in /etc before we come (userdel and sysusers keep "-" backups).
SEED = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/group": "root:x:0:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/gshadow": "root:*::\n",
    "etc/passwd-": "root:x:0:0:root:/root:/bin/bash\n",
    "etc/group-": "root:x:0:\n",
    "etc/shadow-": "root:*:19000:0:99999:7:::\n",
    "etc/gshadow-": "root:*::\n",
    "etc/.pwd.lock": "",
}
BACKUPS = {"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout built as a wheel (from a copy: the build writes next to the sources)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("edge_agent", "converters", "fleet"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    # With the venv's own setuptools when it is recent enough (offline), else pip's isolated
    # build environment, which fetches the build requirements.
    offline = subprocess.run(
        [*build, "--no-build-isolation", str(source)], check=False, timeout=300
    )
    if offline.returncode != 0:
        subprocess.run([*build, str(source)], check=True, timeout=600)
    return next(out.glob("*.whl"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    scratch = tmp_path / "root"
    for relative, text in SEED.items():
        path = scratch / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return scratch


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _tree(root: Path) -> dict[str, str]:
    """Every path under root: a file's sha256, a link's target, or "dir" (venv files by size)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if "__pycache__" in relative:
            continue  # compiled on import; not the installer's doing
        if path.is_symlink():
            tree[relative] = "-> " + os.readlink(path)
        elif path.is_dir():
            tree[relative] = "dir"
        elif relative.startswith(str(VENV)):
            tree[relative] = str(path.stat().st_size)
        else:
            tree[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def _lines_for(root: Path, relative: str, name: str) -> list[str]:
    return [line for line in (root / relative).read_text().splitlines() if line.startswith(name)]


@pytest.mark.slow
def test_install_twice_then_uninstall_and_purge(root: Path, wheel: Path) -> None:
    options = ("--source", str(wheel), "--pip-args", "--no-deps", "--python", "python3")

    first = _install(root, *options)
    assert first.returncode == 0, first.stderr
    after_first = _tree(root)

    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (REPO / "deploy/systemd/edge-agent.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"
    config = root / "etc/edge-agent/agent.toml"
    assert config.read_text() == (REPO / "deploy/agent.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "var/lib/edge-agent").stat().st_mode & 0o777 == 0o750
    assert len(_lines_for(root, "etc/passwd", "edge-agent:")) == 1
    assert (root / VENV / "bin/edge-agent").is_file()
    assert not (root / "etc/systemd/system/fleet-manager.service").exists()

    # The installed program runs (its dependencies taken from this test's environment).
    checked = subprocess.run(
        [str(root / VENV / "bin/edge-agent"), "check-config", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages())),
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{config}: OK"

    # Idempotent: a second run changes nothing.
    second = _install(root, *options)
    assert second.returncode == 0, second.stderr
    assert "keeping the existing" in second.stderr
    assert _tree(root) == after_first
    assert len(_lines_for(root, "etc/passwd", "edge-agent:")) == 1

    # The operator's config survives a re-install.
    config.write_text(config.read_text().replace('id = "press-01"', 'id = "press-07"'))
    assert _install(root, *options).returncode == 0
    assert 'id = "press-07"' in config.read_text()

    # Uninstall keeps config and state, removes the rest.
    (root / "var/lib/edge-agent/outbox.db").write_bytes(b"results not yet delivered")
    removed = _install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert 'id = "press-07"' in config.read_text()
    assert (root / "var/lib/edge-agent/outbox.db").exists()
    assert not (root / "opt").exists()
    assert not unit.exists() and not wants.exists()
    assert not _lines_for(root, "etc/passwd", "edge-agent:")

    # Purge: nothing of ours is left; the system files are as they were.
    purged = _install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    left = {path for path in _tree(root) if path not in SEED and path != "etc"}
    assert not left, left
    for relative, text in SEED.items():
        if relative not in BACKUPS:
            assert (root / relative).read_text() == text, relative


@pytest.mark.slow
def test_install_with_the_fleet_manager_and_uninstall(root: Path, wheel: Path) -> None:
    options = ("--source", str(wheel), "--pip-args", "--no-deps", "--fleet")
    installed = _install(root, *options)
    assert installed.returncode == 0, installed.stderr
    assert (root / "etc/systemd/system/fleet-manager.service").is_file()
    assert (root / "etc/systemd/system/multi-user.target.wants/fleet-manager.service").is_symlink()
    assert "FLEET_BROKER=" in (root / "etc/fleet-manager/fleet.env").read_text()
    assert len(_lines_for(root, "etc/passwd", "fleet-manager:")) == 1
    assert (root / VENV / "bin/fleet").is_file()

    assert _install(root, "--uninstall", "--purge").returncode == 0
    left = {path for path in _tree(root) if path not in SEED and path != "etc"}
    assert not left, left
    assert (root / "etc/passwd").read_text() == SEED["etc/passwd"]


def test_usage_errors_exit_2(root: Path) -> None:
    assert _install(root, "--no-such-option").returncode == 2
    assert _install(root, "--purge").returncode == 2
    help_text = _install(root, "--help")
    assert help_text.returncode == 0
    assert "--uninstall" in help_text.stdout and "--root DIR" in help_text.stdout
