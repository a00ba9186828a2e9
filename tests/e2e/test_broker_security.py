"""The agent and the fleet manager on a broker that requires TLS client certificates or passwords.

The brokers are real mosquittos. The test's own probe stands in for the plant's sensors and
dashboards: on a plain listener beside the TLS one, or with its own password.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from edge_agent.contracts.payloads import ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_bundle
from tests.support.mosquitto import free_port, start_mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run
from tests.support.tls import CertificateAuthority
from tests.support.tools import require_tool

PREFIX = "secure"
TOPICS = DeviceTopics(PREFIX, "plant-a", "press-01")


def _serve_and_answer(probe: Probe, agent: AgentProcess) -> ResultPayload:
    """Wait for the agent's online status, send one reading, return its result."""
    probe.subscribe(f"{PREFIX}/#")
    probe.wait_for(
        lambda msgs: any(
            m.topic == TOPICS.status and decode(StatusPayload, m.payload).state == "online"
            for m in msgs
        ),
        timeout=60,
    )
    reading = dict(zip(FEATURES, [70.0, 0.3, 5.0], strict=True)) | {"ts": 1_700_000_000.0}
    probe.publish(f"{PREFIX}-in/line-2/press-1/reading", json.dumps(reading))
    [result] = [
        decode(ResultPayload, m.payload)
        for m in probe.wait_for(lambda msgs: any("/results/" in m.topic for m in msgs))
        if "/results/" in m.topic
    ]
    assert "Traceback" not in agent.output()
    return result


def test_agent_and_fleet_connect_with_client_certificates(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "pki")
    server = authority.issue("broker", server=True)
    device = authority.issue("press-01")
    manager = authority.issue("fleet")
    tls_port = free_port()
    broker = start_mosquitto(
        tmp_path / "broker",
        extra_config=(
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {authority.ca}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
    )
    probe = Probe(broker.port)
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            port=tls_port,
            prefix=PREFIX,
            bundle=linear_bundle(tmp_path / "linear.bundle"),
            state_dir=tmp_path / "state",
            input_topic=f"{PREFIX}-in/line-2/+/reading",
            extra=(
                f'[broker.tls]\nca_file = "{authority.ca}"\n'
                f'cert_file = "{device.cert}"\nkey_file = "{device.key}"\n'
            ),
        )
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            result = _serve_and_answer(probe, agent)
            assert result.device == "press-01"
            assert "mqtts://127.0.0.1" in agent.output()  # the log says the link is encrypted

            fleet = ["--broker", f"127.0.0.1:{tls_port}", "--prefix", PREFIX]
            listed = run(
                "fleet", *fleet, "--ca-file", str(authority.ca),
                "--cert-file", str(manager.cert), "--key-file", str(manager.key),
                "devices", "list", "--live", "--json",
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            devices = json.loads(listed.stdout)
            assert [(d["device"], d["state"]) for d in devices] == [("press-01", "online")]

            # The broker really demands a certificate: without one the manager is turned away.
            refused = run(
                "fleet", *fleet, "--ca-file", str(authority.ca), "devices", "list", "--live",
                timeout=60,
            )  # fmt: skip
            assert refused.returncode != 0
            assert "Traceback" not in refused.stderr and refused.stderr.strip(), refused.stderr
    finally:
        probe.close()
        broker.stop()


def test_a_password_from_a_systemd_credential_connects_and_is_never_written_out(
    tmp_path: Path,
) -> None:
    require_tool("mosquitto_passwd", "mosquitto")
    secret = "s3cret-Press01-do-not-log"
    passwd = tmp_path / "passwd"
    for user, password in (("press-01", secret), ("probe", "probe-password")):
        subprocess.run(
            ["mosquitto_passwd", *(["-c"] if user == "press-01" else []), "-b", str(passwd), user,
             password],
            check=True,
            capture_output=True,
        )  # fmt: skip
    passwd.chmod(0o644)
    broker = start_mosquitto(
        tmp_path / "broker",
        extra_config=f"allow_anonymous false\npassword_file {passwd}\n",
    )
    probe = Probe(broker.port, username="probe", password="probe-password")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "broker-password").write_text(secret + "\n")
    state_dir = tmp_path / "state"
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            port=broker.port,
            prefix=PREFIX,
            bundle=linear_bundle(tmp_path / "linear.bundle"),
            state_dir=state_dir,
            input_topic=f"{PREFIX}-in/line-2/+/reading",
            broker='username = "press-01"\npassword_credential = "broker-password"\n',
        )
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}
        agent = AgentProcess(config, tmp_path / "agent.log", env=env, log_level="DEBUG")
        with agent:
            assert _serve_and_answer(probe, agent).device == "press-01"
            assert agent.stop() == 0
        written = [agent.output(), *(p.read_text(errors="replace") for p in _texts(state_dir))]
        assert written[0].count("press-01") > 0  # the log is there, and names the user
        assert not any(secret in text for text in written)
        status = [m.payload.decode() for m in probe.messages if m.topic.startswith(PREFIX + "/")]
        assert status and not any(secret in payload for payload in status)

        # The same config without the credential: a clear error naming it, exit 78, no retry loop.
        empty = tmp_path / "no-credentials"
        empty.mkdir()
        missing = AgentProcess(
            config, tmp_path / "missing.log", env={"CREDENTIALS_DIRECTORY": str(empty)}
        )
        with missing:
            assert missing.process is not None and missing.process.wait(60) == 78
        assert "broker.password" in missing.output() and "Traceback" not in missing.output()
    finally:
        probe.close()
        broker.stop()


def _texts(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.suffix in {".json", ".log"}]
