"""sd_notify with a real agent subprocess: READY once subscribed, WATCHDOG only while inference
is healthy, STATUS lines and STOPPING, received on a real unix datagram socket."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edge_agent.contracts.bundle import write_bundle
from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec
from edge_agent.contracts.payloads import ResultPayload, decode
from edge_agent.contracts.topics import fleet_filter
from edge_agent.systemd import SystemdNotifier
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, linear_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.notify_socket import NotifySocket
from tests.support.processes import AgentProcess

GOOD = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_notifier_sends_datagrams_to_a_path_socket(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(notify_socket.path)})
    assert notifier.enabled
    assert notifier.ready("Serving\nline two")
    assert notifier.watchdog()
    assert notifier.stopping("Stopping")
    notifier.close()
    assert notify_socket.wait_for(lambda m: "READY" in m) == {
        "READY": "1",
        "STATUS": "Serving line two",  # one line: a newline would start a new field
    }
    notify_socket.wait_for(lambda m: m == {"WATCHDOG": "1"})
    notify_socket.wait_for(lambda m: m == {"STOPPING": "1", "STATUS": "Stopping"})


def test_notifier_speaks_to_an_abstract_socket() -> None:
    name = f"edge-test-{os.getpid()}-{id(object())}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    receiver.settimeout(10)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("Hello")
        assert receiver.recv(1024) == b"STATUS=Hello"
        notifier.close()
    finally:
        receiver.close()


def test_notifier_outside_systemd_is_a_no_op_and_a_dead_socket_is_not_fatal(
    tmp_path: Path,
) -> None:
    assert not SystemdNotifier({}).enabled
    assert not SystemdNotifier({}).ready("x")
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    assert not gone.watchdog()
    assert not gone.watchdog()


def test_watchdog_interval_is_half_the_period_and_only_for_our_pid() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval_s == 1.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other).watchdog_interval_s is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s is None
    assert SystemdNotifier({}).watchdog_interval_s is None


def _slow_bundle(path: Path) -> Path:
    """A real model whose run time grows with its input: a Loop of max(inputs) iterations.

    Normal readings answer at once; a reading of 1e15 keeps the inference call busy for days,
    which is what a stuck model looks like from outside.
    """
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["X"], ["top"], keepdims=0),
            helper.make_node("Cast", ["top"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "true", "zero"], ["count"], body=body),
            helper.make_node("Mul", ["count", "nothing"], ["vanish"]),
            helper.make_node("ReduceSum", ["X", "axis"], ["total"], keepdims=1),
            helper.make_node("Add", ["total", "vanish"], ["score"]),
        ],
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("nothing", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    manifest = ModelManifest(
        name="slow",
        version="1",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_framework="onnx",
        converter_version="test",
        opset=17,
        formats=["onnx"],
        inputs=[FeatureSpec(name=f) for f in FEATURES],
        outputs=[OutputSpec(name="score", kind="regression")],
        files={"model.onnx": ""},
    )
    write_bundle(path, manifest, {"model.onnx": model.SerializeToString()})
    return path


def _config(tmp_path: Path, broker: Mosquitto, prefix: str, bundle: Path) -> Path:
    return write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=prefix,
        bundle=bundle,
        state_dir=tmp_path / "state",
        input_topic=f"{prefix}-in/line-2/+/reading",
    )


def test_agent_notifies_ready_once_subscribed_then_watchdog_status_and_stopping(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    notify_socket: NotifySocket,
) -> None:
    probe.subscribe(fleet_filter(topic_prefix, "results"))
    config = _config(tmp_path, broker, topic_prefix, linear_bundle(tmp_path / "linear.bundle"))
    env = notify_socket.env(watchdog_usec=400_000)
    with AgentProcess(config, tmp_path / "agent.log", env=env) as agent:
        ready = notify_socket.wait_for(lambda m: m.get("READY") == "1")
        assert ready["STATUS"].startswith("Serving linear@1")
        # READY means subscribed: a reading published right now is not lost.
        probe.publish(f"{topic_prefix}-in/line-2/press-7/reading", json.dumps(GOOD))
        messages = probe.wait_for(lambda msgs: len(msgs) >= 1)
        assert decode(ResultPayload, messages[0].payload).outputs["score"] == 321.5
        notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1")
        notify_socket.wait_for(lambda m: "1 windows" in m.get("STATUS", ""))
        assert agent.stop() == 0
    stopping = notify_socket.wait_for(lambda m: m.get("STOPPING") == "1", timeout=5)
    assert "draining" in stopping["STATUS"]
    order = [next(iter(m)) for m in notify_socket.messages if "READY" in m or "STOPPING" in m]
    assert order == ["READY", "STOPPING"]


@pytest.mark.slow
def test_watchdog_pings_stop_while_inference_is_stuck(
    tmp_path: Path,
    broker: Mosquitto,
    probe: Probe,
    topic_prefix: str,
    notify_socket: NotifySocket,
) -> None:
    probe.subscribe(fleet_filter(topic_prefix, "results"))
    config = _config(tmp_path, broker, topic_prefix, _slow_bundle(tmp_path / "slow.bundle"))
    env = notify_socket.env(watchdog_usec=400_000)
    agent = AgentProcess(config, tmp_path / "agent.log", env=env).start()
    try:
        notify_socket.wait_for(lambda m: m.get("READY") == "1")
        probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(GOOD))
        probe.wait_for(lambda msgs: len(msgs) >= 1)
        notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1")

        stuck = GOOD | {"temperature": 1e15}
        probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(stuck))
        agent.wait_for_log("Inference stuck")
        notify_socket.collect(0.5)  # pings sent before the agent noticed
        later = notify_socket.collect(2.0)
        assert later, "the agent went silent: STATUS lines should go on"
        assert not [m for m in later if "WATCHDOG" in m]
        assert agent.alive()
    finally:
        agent.kill()  # the stuck call never returns: systemd would do the same after WatchdogSec
