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
from fleet.registry import SqliteRegistry
from tests.fleet.support import FleetServe, wait_until
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_bundle
from tests.support.mosquitto import Mosquitto, free_port, start_mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, command, program_env, run
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


def _password_broker(tmp_path: Path, user: str, password: str) -> tuple[Mosquitto, Probe]:
    """A mosquitto that admits only ``user`` and the test's probe, each with its password."""
    require_tool("mosquitto_passwd", "mosquitto")
    passwd = tmp_path / "passwd"
    for name, secret in ((user, password), ("probe", "probe-password")):
        subprocess.run(
            ["mosquitto_passwd", *(["-c"] if name == user else []), "-b", str(passwd), name,
             secret],
            check=True,
            capture_output=True,
        )  # fmt: skip
    passwd.chmod(0o644)
    broker = start_mosquitto(
        tmp_path / "broker",
        extra_config=f"allow_anonymous false\npassword_file {passwd}\n",
    )
    return broker, Probe(broker.port, username="probe", password="probe-password")


def test_a_password_from_a_systemd_credential_connects_and_is_never_written_out(
    tmp_path: Path,
) -> None:
    secret = "s3cret-Press01-do-not-log"
    broker, probe = _password_broker(tmp_path, "press-01", secret)
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


def test_the_fleet_manager_reads_its_broker_password_from_a_credential_or_a_variable(
    tmp_path: Path,
) -> None:
    secret = "s3cret-Fleet-do-not-log"
    broker, probe = _password_broker(tmp_path, "fleet", secret)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text(secret + "\n")  # as an editor leaves it
    db = tmp_path / "fleet.db"
    args = ["--broker", f"127.0.0.1:{broker.port}", "--prefix", PREFIX, "--registry", str(db),
            "--username", "fleet"]  # fmt: skip
    try:
        status = StatusPayload(
            state="online", device="press-01", site="plant-a", ts=1.0, agent_version="test"
        )
        probe.publish(TOPICS.status, status.to_json(), retain=True)

        def recorded() -> bool:
            with SqliteRegistry(db) as registry:
                return [d.id for d in registry.devices()] == ["press-01"]

        # --password-credential NAME: $CREDENTIALS_DIRECTORY/NAME, as systemd's LoadCredential=.
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}
        flag = FleetServe(
            [*args, "--password-credential", "mqtt-password"], tmp_path / "flag.log",
            "--log-level", "DEBUG", env=env,
        )  # fmt: skip
        with flag:  # entering waits until it is subscribed: the broker took the password
            wait_until(recorded, "the manager to record the device's retained status")
        assert flag.stop() == 0
        # The same from the environment, as fleet.env sets it for the systemd unit.
        variable = FleetServe(
            args, tmp_path / "variable.log", "--log-level", "DEBUG",
            env={**env, "FLEET_PASSWORD_CREDENTIAL": "mqtt-password"},
        )  # fmt: skip
        with variable:
            pass
        assert variable.stop() == 0
        # --password-env VAR, and a wrong password is turned away (the broker really checks).
        live = [*args, "--password-env", "FLEET_TEST_PASSWORD", "devices", "list", "--live",
                "--json"]  # fmt: skip
        listed = subprocess.run(
            command("fleet", *live), env=program_env({"FLEET_TEST_PASSWORD": secret}),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [d["device"] for d in json.loads(listed.stdout)] == ["press-01"]
        wrong = subprocess.run(
            command("fleet", *live), env=program_env({"FLEET_TEST_PASSWORD": "not-it"}),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
        logs = [flag.output(), variable.output(), listed.stdout + listed.stderr]
        assert all("Fleet worker serving" in log for log in logs[:2])
        assert not any(secret in log for log in logs)

        # A missing credential: a clear error naming it, exit 78 (systemd does not restart it).
        empty = tmp_path / "no-credentials"
        empty.mkdir()
        for missing_env in ({"CREDENTIALS_DIRECTORY": str(empty)}, {}):
            missing = subprocess.run(
                command("fleet", *args, "--password-credential", "mqtt-password", "serve"),
                env={k: v for k, v in program_env(missing_env).items()
                     if missing_env or k != "CREDENTIALS_DIRECTORY"},
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert missing.returncode == 78, missing.stderr
            assert "--password-credential" in missing.stderr and "mqtt-password" in missing.stderr
            assert "Traceback" not in missing.stderr
        assert "LoadCredential" in missing.stderr  # no $CREDENTIALS_DIRECTORY: says who sets it
    finally:
        probe.close()
        broker.stop()


def _texts(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.suffix in {".json", ".log"}]
