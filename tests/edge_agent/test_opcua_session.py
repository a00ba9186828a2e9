"""The OPC-UA session: one per server, shared, closed on stop, against a real asyncua server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.config import OpcUaSecurity
from tests.edge_agent.test_opcua import (
    counters,
    opcua_agent_config,
    samples_received,
    source_state,
    wait_until,
)
from tests.support.mosquitto import Mosquitto
from tests.support.opcua import OpcUaTestServer, Tag, make_certificate
from tests.support.processes import AgentProcess, run

pytestmark = pytest.mark.slow


def test_two_sources_and_a_writeback_on_one_server_share_one_session(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str, opcua_server: OpcUaTestServer
) -> None:
    url = opcua_server.endpoint
    second_source_and_sink = f"""
[[sources]]
type = "opcua"
name = "plc-line"
url = "{url}"
asset = "press-2"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
tags = [{{ name = "temperature", node_id = "{opcua_server.node_id("temperature")}" }}]

[[sinks]]
type = "opcua"
name = "plc-writeback"
url = "{url}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
writes = [{{ output = "score", node_id = "{opcua_server.node_id("pressure")}", asset = "none" }}]
"""
    config = opcua_agent_config(
        tmp_path,
        port=broker.port,
        prefix=topic_prefix,
        server=opcua_server,
        extra=second_source_and_sink,
    )
    state_dir = tmp_path / "state"
    assert opcua_server.sessions() == 0
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        wait_until(lambda: len(opcua_server.subscriptions()) == 2, "one subscription per source")
        # Three users of one server, one session: a PLC's few session slots are not used up.
        assert opcua_server.sessions() == 1
        before = samples_received(state_dir)
        opcua_server.write("vibration", 0.5)
        wait_until(lambda: samples_received(state_dir) > before, "a value through the session")
        assert opcua_server.sessions() == 1
        assert agent.stop() == 0
    # A clean stop closes the session and its subscriptions, rather than leaving the PLC to time
    # them out while it refuses new sessions.
    assert opcua_server.sessions() == 0
    assert opcua_server.subscriptions() == []
    assert "Traceback" not in agent.output()


def test_a_subscription_the_server_dropped_is_recreated_and_a_quiet_plant_is_left_alone(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str, opcua_server: OpcUaTestServer
) -> None:
    watchdog_s = 4.0
    config = opcua_agent_config(
        tmp_path,
        port=broker.port,
        prefix=topic_prefix,
        server=opcua_server,
        extra_source=f"watchdog_s = {watchdog_s}",
    )
    state_dir = tmp_path / "state"
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
        [first] = opcua_server.subscriptions()

        # A quiet plant: no value changes for several watchdog periods. The server's keep-alives
        # show the subscription is alive, so the watchdog leaves it alone.
        quiet_since = time.monotonic()
        wait_until(lambda: time.monotonic() - quiet_since > 3 * watchdog_s, "a quiet spell")
        assert "opcua.watchdog.plc" not in counters(state_dir)
        assert opcua_server.subscriptions() == [first]

        # The PLC drops the subscription and tells nobody; the session stays up.
        opcua_server.drop_subscriptions()
        wait_until(lambda: counters(state_dir).get("opcua.watchdog.plc", 0) >= 1, "the watchdog")
        wait_until(lambda: len(opcua_server.subscriptions()) == 1, "a new subscription")
        assert opcua_server.subscriptions() != [first]
        before = samples_received(state_dir)
        opcua_server.write("temperature", 80.0)
        wait_until(lambda: samples_received(state_dir) > before, "values flowing again")
        # Re-created on the same session: not a reconnect.
        assert opcua_server.sessions() == 1
        assert "opcua.reconnects.plc" not in counters(state_dir)

        # Again: counted, but a server that keeps doing it does not fill the log.
        [second] = opcua_server.subscriptions()
        opcua_server.drop_subscriptions()
        wait_until(lambda: counters(state_dir).get("opcua.watchdog.plc", 0) >= 2, "the watchdog")
        wait_until(lambda: opcua_server.subscriptions() not in ([], [second]), "a new one")
        before = samples_received(state_dir)
        opcua_server.write("temperature", 81.0)
        wait_until(lambda: samples_received(state_dir) > before, "values flowing again")
        assert agent.stop() == 0
    log = agent.output()
    assert len([line for line in log.splitlines() if "re-creating the subscription" in line]) == 1
    assert "lost (" not in log
    assert "Traceback" not in log


def user_certificate_security(
    pki: Path, server_cert: Path, user: tuple[Path, Path], *, policy: str = "Basic256Sha256"
) -> str:
    client_cert, client_key = make_certificate(pki, "edge-agent", server=False)
    return f"""
[sources.security]
policy = "{policy}"
mode = "SignAndEncrypt"
certificate = "{client_cert}"
private_key = "{client_key}"
server_certificate = "{server_cert}"
user_certificate = "{user[0]}"
user_private_key = "{user[1]}"
"""


def test_a_user_certificate_is_the_session_identity(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    pki = tmp_path / "pki"
    server_cert = make_certificate(pki, "plc", server=True)
    operator = make_certificate(pki, "operator", server=False)
    stranger = make_certificate(pki, "stranger", server=False)
    # The server takes X.509 user identities only, and trusts the operator's certificate.
    server = OpcUaTestServer(
        [Tag("temperature", 70.0), Tag("vibration", 0.3), Tag("pressure", 5.0)],
        secured=server_cert,
        user_certificates=[operator[0]],
    )
    server.start()
    try:
        config = opcua_agent_config(
            tmp_path,
            port=broker.port,
            prefix=topic_prefix,
            server=server,
            extra_source=user_certificate_security(pki, server_cert[0], operator),
        )
        state_dir = tmp_path / "state"
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            agent.wait_for_log("serving")
            wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
            server.write("temperature", 71.5)
            wait_until(lambda: samples_received(state_dir) >= 4, "a value as the operator")
            assert server.sessions() == 1
            assert agent.stop() == 0
        assert server.sessions() == 0

        # Another certificate, however well formed, is not a user this server knows.
        config = opcua_agent_config(
            tmp_path,
            port=broker.port,
            prefix=topic_prefix,
            server=server,
            extra_source=user_certificate_security(pki, server_cert[0], stranger),
        )
        (state_dir / "status.json").unlink()
        with AgentProcess(config, tmp_path / "refused.log") as agent:
            agent.wait_for_log("unreachable (BadUserAccessDenied")
            assert source_state(state_dir) != "connected"
            assert samples_received(state_dir) == 0
            assert agent.stop() == 0
    finally:
        server.close()


@pytest.mark.parametrize(
    ("problem", "key"),
    [
        ("missing", "user_certificate"),
        ("not_a_certificate", "user_certificate"),
        ("other_key", "user_private_key"),
        ("application_certificate_missing", "certificate"),
    ],
)
def test_a_certificate_that_cannot_be_used_is_a_config_error(
    tmp_path: Path, opcua_server: OpcUaTestServer, problem: str, key: str
) -> None:
    pki = tmp_path / "pki"
    operator = make_certificate(pki, "operator", server=False)
    other = make_certificate(pki, "other", server=False)
    server_cert = make_certificate(pki, "plc", server=True)
    user = {
        "missing": (pki / "nowhere.der", operator[1]),
        "not_a_certificate": (operator[1], operator[1]),  # the key file given as certificate
        "other_key": (operator[0], other[1]),
        "application_certificate_missing": operator,
    }[problem]
    security = user_certificate_security(pki, server_cert[0], user)
    named = {"user_certificate": user[0], "user_private_key": user[1]}
    if problem == "application_certificate_missing":
        named["certificate"] = pki / "gone.der"
        security = security.replace(str(pki / "edge-agent.der"), str(named["certificate"]))
    config = opcua_agent_config(
        tmp_path,
        port=1,  # never reached: the agent stops before it connects to anything
        prefix="unused",
        server=opcua_server,
        extra_source=security,
    )
    result = run("edge-agent", "run", "--config", str(config), timeout=120)
    # 78 (EX_CONFIG) at once: systemd does not restart it, and nobody waits on an "unreachable"
    # PLC that is in fact a wrong path.
    assert result.returncode == 78, result.stderr
    assert f"plc: security.{key}" in result.stderr
    assert str(named[key]) in result.stderr
    assert "unreachable" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("security", "error"),
    [
        ({"user_certificate": "u.der"}, "user_certificate and user_private_key go together"),
        (
            {"user_certificate": "u.der", "user_private_key": "u.pem", "username": "edge"},
            "a username or a user_certificate, not both",
        ),
        (
            {"policy": "None", "user_certificate": "u.der", "user_private_key": "u.pem"},
            "a user_certificate needs policy Basic256Sha256",
        ),
        ({"user_cert": "u.der"}, "Extra inputs are not permitted"),
    ],
)
def test_user_certificate_settings_are_checked_when_the_config_loads(
    security: dict[str, str], error: str
) -> None:
    base = {"certificate": "c.der", "private_key": "c.pem"}
    with pytest.raises(ValidationError, match=error):
        OpcUaSecurity.model_validate(base | security)
