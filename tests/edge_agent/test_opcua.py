"""OPC-UA tags through windows to results on MQTT, against a real in-process asyncua server."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from edge_agent.contracts.payloads import ResultPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.opcua import OpcUaTestServer, Tag, make_certificate
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.slow

FEATURES = ["temperature_mean", "vibration_rms", "pressure_last"]
WEIGHTS = (1.0, 10.0, 100.0)
BIAS = 0.5
# Seconds between samples of each tag: three rates, aligned by the windows.
PERIODS = {"temperature": 0.25, "vibration": 0.1, "pressure": 0.5}


def opcua_agent_config(
    tmp_path: Path,
    *,
    port: int,
    prefix: str,
    server: OpcUaTestServer,
    extra_source: str = "",
    tag_lines: list[str] | None = None,
    extra: str = "",
) -> Path:
    bundle = linear_bundle(
        tmp_path / "windowed.bundle", features=FEATURES, weights=WEIGHTS, bias=BIAS
    )
    lines = tag_lines or [
        f'  {{ name = "{tag}", node_id = "{server.node_id(tag)}" }},' for tag in PERIODS
    ]
    tags = "tags = [\n" + "\n".join(lines) + "\n]"
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
topic_prefix = "{prefix}"

[device]
id = "press-01"
site = "plant-a"
state_dir = "{tmp_path / "state"}"

[broker]
port = {port}
keepalive_s = 5
reconnect_max_s = 2

[model]
bundle = "{bundle}"

[[sources]]
type = "opcua"
name = "plc"
url = "{server.endpoint}"
asset = "press-1"
publishing_interval_ms = 50
sampling_interval_ms = 0
queue_size = 100
reconnect_min_s = 0.2
reconnect_max_s = 1.0
{tags}
{extra_source}
{extra}

[windows]
mode = "tumbling"
length_s = 1.0
allowed_lateness_s = 0.5

[heartbeat]
interval_s = 1
"""
    )
    return path


def schedule(start: float, end: float) -> list[tuple[float, str]]:
    """(time, tag) of every sample in [start, end), in time order."""
    points = []
    for tag, period in PERIODS.items():
        n = 0
        while start + n * period < end - 1e-9:
            points.append((round(start + n * period, 6), tag))
            n += 1
    return sorted(points)


def expected_score(samples: list[tuple[float, str, float]], start: float, end: float) -> float:
    def values(tag: str) -> list[float]:
        return [v for ts, t, v in samples if t == tag and start <= ts < end]

    temperature, vibration, pressure = (
        values("temperature"),
        values("vibration"),
        values("pressure"),
    )
    features = [
        sum(temperature) / len(temperature),
        math.sqrt(sum(v * v for v in vibration) / len(vibration)),
        pressure[-1],
    ]
    return sum(w * f for w, f in zip(WEIGHTS, features, strict=True)) + BIAS


def samples_received(state_dir: Path) -> float:
    try:
        status = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return float(status["counters"].get("source.plc.samples", 0))


def source_state(state_dir: Path) -> str:
    try:
        return str(json.loads((state_dir / "status.json").read_text())["sources"]["plc"])
    except (OSError, ValueError, KeyError):
        return ""


def wait_until(condition: object, what: str, timeout: float = 90) -> None:
    # Generous: on a loaded two-core machine the agent, the server and the broker share the CPU.
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Feeder:
    """Writes samples with their own source timestamps, as a PLC would, and remembers them."""

    def __init__(self, server: OpcUaTestServer, state_dir: Path) -> None:
        self.server = server
        self.state_dir = state_dir
        self.samples: list[tuple[float, str, float]] = []
        self.baseline = 0.0

    def feed(self, start: float, end: float) -> None:
        for ts, tag in schedule(start, end):
            # Distinct values, so that every write is a change the server reports: above every
            # tag's initial value too (a first write equal to it would change nothing).
            value = round(100.0 + len(self.samples) * 0.37 + ts % 7, 6)
            self.server.write(tag, value, ts=ts)
            self.samples.append((ts, tag, value))
        wanted = self.baseline + len(self.samples)
        # All of them inside the agent before anything later is written, so none counts as late.
        try:
            wait_until(lambda: samples_received(self.state_dir) >= wanted, f"{wanted} samples")
        except AssertionError as error:
            raise AssertionError(
                f"{error}; the agent counts {samples_received(self.state_dir)}"
            ) from None


def results(probe: Probe, topic: str) -> dict[float, float]:
    return {
        decoded.window_end: float(decoded.outputs["score"])
        for decoded in (decode(ResultPayload, m.payload) for m in probe.on_topic(topic))
    }


def test_tags_at_three_rates_become_windows_checked_value_by_value(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    opcua_server: OpcUaTestServer,
) -> None:
    topic = DeviceTopics(topic_prefix, "plant-a", "press-01").results("press-1")
    probe.subscribe(topic)
    config = opcua_agent_config(
        tmp_path, port=broker.port, prefix=topic_prefix, server=opcua_server
    )
    state_dir = tmp_path / "state"
    # Sample time an hour ahead: windows close on sample time alone, never on this machine's clock.
    base = math.ceil(time.time()) + 3600.0
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        feeder = Feeder(opcua_server, state_dir)
        wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
        feeder.baseline = samples_received(state_dir)
        for k in range(3):
            feeder.feed(base + k, base + k + 1)
        feeder.feed(base + 4, base + 4.01)  # moves sample time past the third window's lateness
        ends = [base + k + 1 for k in range(3)]
        probe.wait_for(lambda _m: all(end in results(probe, topic) for end in ends))
        got = results(probe, topic)
        for k, end in enumerate(ends):
            assert got[end] == pytest.approx(
                expected_score(feeder.samples, base + k, end), rel=1e-6
            ), k
        assert agent.stop() == 0
    assert "Traceback" not in agent.output()


def counters(state_dir: Path) -> dict[str, float]:
    return dict(json.loads((state_dir / "status.json").read_text())["counters"])


def test_status_codes_become_quality_flags_and_bad_samples_feed_no_window(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    opcua_server: OpcUaTestServer,
) -> None:
    config = opcua_agent_config(
        tmp_path, port=broker.port, prefix=topic_prefix, server=opcua_server
    )
    state_dir = tmp_path / "state"
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
        before = samples_received(state_dir)
        # A failed sensor: Bad, and no value at all. Then a value the PLC is unsure of.
        # asyncua annotates StatusCode's value with UInt32, its own int subclass
        bad = ua.StatusCode(StatusCodes.BadSensorFailure)  # type: ignore[arg-type]
        uncertain = ua.StatusCode(StatusCodes.UncertainLastUsableValue)  # type: ignore[arg-type]
        opcua_server.write("pressure", None, status=bad)
        opcua_server.write("vibration", 0.7, status=uncertain)
        opcua_server.write("temperature", 71.0)
        wait_until(lambda: samples_received(state_dir) >= before + 3, "the three samples")
        wait_until(lambda: "samples.quality_bad" in counters(state_dir), "the bad sample counted")
        seen = counters(state_dir)
        assert seen["samples.quality_bad"] == 1
        # Uncertain values are used by default (use_uncertain = true): not dropped.
        assert "samples.quality_uncertain" not in seen
        assert not any(name.startswith("rejects.") for name in seen), seen
        assert agent.stop() == 0
    assert "Traceback" not in agent.output()


def test_server_restart_resumes_by_itself_and_loses_no_window(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    opcua_server: OpcUaTestServer,
) -> None:
    topic = DeviceTopics(topic_prefix, "plant-a", "press-01").results("press-1")
    probe.subscribe(topic)
    config = opcua_agent_config(
        tmp_path, port=broker.port, prefix=topic_prefix, server=opcua_server
    )
    state_dir = tmp_path / "state"
    base = math.ceil(time.time()) + 3600.0
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving")
        feeder = Feeder(opcua_server, state_dir)
        wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
        feeder.baseline = samples_received(state_dir)
        feeder.feed(base, base + 1)  # the first window, still open when the server goes

        opcua_server.stop()
        wait_until(lambda: source_state(state_dir) == "reconnecting", "the outage to be seen")
        opcua_server.start()  # a new server process on the same port, as after a PLC reboot
        wait_until(lambda: source_state(state_dir) == "connected", "the reconnect")
        # The new server's initial values are counted too (and are late for these windows).
        wait_until(
            lambda: samples_received(state_dir) >= feeder.baseline + len(feeder.samples) + 3,
            "initial values after the restart",
        )
        feeder.baseline = samples_received(state_dir) - len(feeder.samples)
        feeder.feed(base + 1, base + 2)
        feeder.feed(base + 2, base + 3)
        feeder.feed(base + 4, base + 4.01)
        ends = [base + k + 1 for k in range(3)]
        probe.wait_for(lambda _m: all(end in results(probe, topic) for end in ends))
        got = results(probe, topic)
        for k, end in enumerate(ends):
            assert got[end] == pytest.approx(
                expected_score(feeder.samples, base + k, end), rel=1e-6
            ), k
        assert agent.stop() == 0
    log = agent.output()
    assert len([line for line in log.splitlines() if "lost (" in line]) == 1, log
    back = [line for line in log.splitlines() if "is back after" in line]
    assert len(back) == 1, log
    assert "Traceback" not in log


def test_results_are_written_back_to_a_plc_node(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    server = OpcUaTestServer([Tag("speed", 1.0, folder="Press"), Tag("health", 0.0, folder="Line")])
    server.start()
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            port=broker.port,
            prefix=topic_prefix,
            bundle=linear_bundle(tmp_path / "linear.bundle"),
            state_dir=tmp_path / "state",
            input_topic=f"{topic_prefix}-in/line-2/+/reading",
            extra=f"""
[[sinks]]
type = "opcua"
name = "plc"
url = "{server.endpoint}"
writes = [
  {{ output = "score", node_id = "{server.node_id("health")}", asset = "press-1" }},
]
""",
        )
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            agent.wait_for_log("OPC-UA server")
            agent.wait_for_log("serving")
            reading = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}
            probe.publish(f"{topic_prefix}-in/line-2/other/reading", json.dumps(reading))
            probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(reading))
            wait_until(lambda: server.read("health") == 1 + 20 + 300 + 0.5, "the write-back")
            reading["pressure"] = 4.0
            probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(reading))
            wait_until(lambda: server.read("health") == 1 + 20 + 400 + 0.5, "the second write")
            assert agent.stop() == 0
        assert "Traceback" not in agent.output()
    finally:
        server.close()


def test_basic256sha256_with_user_and_password(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    server_cert = make_certificate(tmp_path / "pki", "plc", server=True)
    client_cert, client_key = make_certificate(tmp_path / "pki", "edge-agent", server=False)
    server = OpcUaTestServer(
        [Tag("temperature", 70.0), Tag("vibration", 0.3), Tag("pressure", 5.0)],
        secured=server_cert,
        users={"edge": "s3cret"},
    )
    server.start()
    try:
        security = f"""
[sources.security]
policy = "Basic256Sha256"
mode = "SignAndEncrypt"
certificate = "{client_cert}"
private_key = "{client_key}"
server_certificate = "{server_cert[0]}"
username = "edge"
password_env = "TEST_OPCUA_PASSWORD"
"""
        config = opcua_agent_config(
            tmp_path, port=broker.port, prefix=topic_prefix, server=server, extra_source=security
        )
        state_dir = tmp_path / "state"
        with AgentProcess(
            config, tmp_path / "agent.log", env={"TEST_OPCUA_PASSWORD": "s3cret"}
        ) as agent:
            agent.wait_for_log("serving")
            wait_until(lambda: samples_received(state_dir) >= 3, "the initial values")
            server.write("temperature", 71.5)
            wait_until(lambda: samples_received(state_dir) >= 4, "a value over the secure channel")
            assert agent.stop() == 0
        assert "s3cret" not in agent.output()

        (state_dir / "status.json").unlink()
        with AgentProcess(
            config, tmp_path / "refused.log", env={"TEST_OPCUA_PASSWORD": "wrong"}
        ) as agent:
            agent.wait_for_log("unreachable (BadUserAccessDenied")
            assert source_state(state_dir) != "connected"
            assert samples_received(state_dir) == 0
            assert agent.alive()
            assert agent.stop() == 0
        assert "wrong" not in agent.output().replace("wrong password", "")
    finally:
        server.close()
