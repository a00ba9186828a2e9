from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import MqttSourceConfig, check_config, read_secret, sample_config_text
from edge_agent.errors import ConfigError
from tests.support.processes import REPO, run


def test_sample_config_is_valid_and_identical_to_the_shipped_one(tmp_path: Path) -> None:
    printed = run("edge-agent", "sample-config", check=True).stdout
    assert printed == sample_config_text() == (REPO / "deploy" / "agent.toml").read_text()
    path = tmp_path / "agent.toml"
    path.write_text(printed)
    config, problems = check_config(path)
    assert problems == [] and config is not None
    source = config.sources[0]
    assert isinstance(source, MqttSourceConfig)
    assert config.device.id == "press-01" and source.asset_level == 2


BAD = """\
[device]
id = "a"
site = "b"
colour = "blue"

[model]
bundle = "x.bundle"

[[sources]]
type = "mqtt"
topics = ["t/#"]
asset = "x"

[[sources]]
type = "mqtt"
name = "second"
topics = ["u/#"]
asset = "y"
qos = 2
"""


def test_check_config_reports_file_line_key_and_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BAD)
    result = run("edge-agent", "check-config", "--config", str(path))
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert f"{path}:4: device.colour: unknown key" in lines[0]
    assert f"{path}:19: sources[1].qos: Input should be 0 or 1" in lines[1]
    assert "2 problem(s)" in lines[-1]


def test_toml_syntax_errors_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[device\nid=1\n")
    _, problems = check_config(path)
    assert problems[0].line == 1 and "not valid TOML" in problems[0].reason
    assert run("edge-agent", "run", "--config", str(tmp_path / "absent.toml")).returncode == 78


def test_secrets_come_from_environment_or_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PW", "s3cret")
    assert read_secret(env="EDGE_TEST_PW", credential=None, what="pw") == "s3cret"
    (tmp_path / "mqtt-password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret(env=None, credential="mqtt-password", what="pw") == "from-systemd"
    with pytest.raises(ConfigError, match="EDGE_TEST_MISSING is not set"):
        read_secret(env="EDGE_TEST_MISSING", credential=None, what="pw")
