"""The generated ACL, enforced by a real mosquitto: a device uses only its own topics."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.contracts.topics import DeviceTopics
from fleet.acl import AclError, DeviceId, render_acl, write_broker_acl
from tests.fleet.support import wait_until
from tests.support.mosquitto import start_mosquitto
from tests.support.processes import run
from tests.support.tools import require_tool

PREFIX = "edge"
A = DeviceTopics(PREFIX, "plant-a", "press-01")
B = DeviceTopics(PREFIX, "plant-a", "press-02")


class Client:
    """A paho client logged in as ``user``, recording what it receives."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.received: list[str] = []
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        answers: list[str] = []
        self.client.on_connect = lambda _c, _u, _f, code, _p: answers.append(str(code))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: answers, f"the broker's answer to {user}")
        if answers[0] != "Success":
            self.close()
            raise PermissionError(f"{user} refused: {answers[0]}")

    def subscribe(self, topic: str) -> None:
        done: list[int] = []
        self.client.on_subscribe = lambda *_args: done.append(1)
        self.client.subscribe(topic, 1)
        wait_until(lambda: done, f"SUBACK for {topic}")

    def publish(self, topic: str) -> None:
        self.client.publish(topic, b"{}", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_render_names_each_device_and_its_own_topics_only() -> None:
    text = render_acl(
        [DeviceId("plant-a", "press-01"), DeviceId("plant-a", "press-02")],
        prefix=PREFIX,
        manager_user="fleet",
    )
    section = text.split("user press-01\n")[1].split("\n\n")[0]
    assert f"topic write {A.ack}" in section and f"topic read {A.desired}" in section
    assert "press-02" not in section
    assert "user fleet\ntopic readwrite edge/#" in text


def test_bad_device_lists_are_refused_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(AclError, match="SITE/ID"):
        DeviceId.parse("press-01")
    with pytest.raises(AclError, match="must not contain"):
        DeviceId.parse("plant-a/press+1")
    with pytest.raises(AclError, match="unique"):
        write_broker_acl(tmp_path, [DeviceId("a", "d1"), DeviceId("b", "d1")], prefix=PREFIX)
    with pytest.raises(AclError, match="manager user"):
        write_broker_acl(tmp_path, [DeviceId("a", "fleet")], prefix=PREFIX)


def test_a_device_cannot_use_another_devices_topics(tmp_path: Path) -> None:
    require_tool("mosquitto_passwd", "mosquitto")
    out = tmp_path / "acl"
    result = run(
        "fleet", "--prefix", PREFIX, "--registry", str(tmp_path / "fleet.db"), "broker-acl",
        "--out", str(out), "--device", "plant-a/press-01", "--device", "plant-a/press-02",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    credentials = json.loads((out / "credentials.json").read_text())
    assert (out / "credentials.json").stat().st_mode & 0o077 == 0
    assert "press-01" not in (out / "passwd").read_text().split("press-01:")[1][:30]  # hashed
    # Started as root, mosquitto switches to its own user, which cannot read the owner-only
    # files this test wrote; a real install chowns them to the broker's user instead.
    stay = "user root\n" if os.geteuid() == 0 else ""
    broker = start_mosquitto(
        tmp_path / "broker",
        extra_config=f"{stay}allow_anonymous false\nacl_file {out / 'acl'}\n"
        f"password_file {out / 'passwd'}\n",
    )
    try:
        manager = Client(broker.port, "fleet", credentials["fleet"])
        device_a = Client(broker.port, "press-01", credentials["press-01"])
        manager.subscribe(f"{PREFIX}/#")
        device_a.subscribe(f"{PREFIX}/+/+/cmd")

        # press-01 speaks for press-02, then for itself: only its own message gets through.
        device_a.publish(B.ack)
        device_a.publish(B.status)
        device_a.publish(A.ack)
        wait_until(lambda: A.ack in manager.received, "press-01's own ack")
        assert B.ack not in manager.received and B.status not in manager.received

        # The manager commands press-02, then press-01: press-01 reads its own commands only.
        manager.publish(B.cmd)
        manager.publish(A.cmd)
        wait_until(lambda: A.cmd in device_a.received, "press-01's own command")
        assert B.cmd not in device_a.received

        with pytest.raises(PermissionError, match=r"Not authorized|Bad user name or password"):
            Client(broker.port, "press-01", "wrong password")
        device_a.close()
        manager.close()
    finally:
        broker.stop()


def test_running_again_keeps_passwords_and_adds_devices(tmp_path: Path) -> None:
    first = write_broker_acl(tmp_path, [DeviceId("a", "d1")], prefix=PREFIX)
    before = json.loads(Path(first.credentials).read_text())
    second = write_broker_acl(tmp_path, [DeviceId("a", "d1"), DeviceId("a", "d2")], prefix=PREFIX)
    after = json.loads(Path(second.credentials).read_text())
    assert after["d1"] == before["d1"] and after["fleet"] == before["fleet"]
    assert set(after) == {"fleet", "d1", "d2"}
