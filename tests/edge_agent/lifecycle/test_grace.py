"""Shadow runs, the grace period's health gates and rollbacks, with a real agent and broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.edge_agent.lifecycle.conftest import Device, Keys, start_device
from tests.support.lifecycle import complete_bundle, fragile_onnx
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe

V1 = ((1.0, 10.0, 100.0), 0.5)


def feed_until(device: Device, done: Callable[[], bool], timeout: float = 60) -> None:
    """Send normal readings, a few at a time, until ``done()`` holds."""
    rng = np.random.default_rng(11)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached while feeding readings"
        for row in rng.normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0], size=(5, 3)):
            device.send(row)
        time.sleep(0.05)


def has_ack(device: Device, step: str, cmd_id: str) -> Callable[[], bool]:
    return lambda: any(a.step == step and a.cmd_id == cmd_id for a in device.fleet.acks())


def test_a_model_that_starts_failing_is_rolled_back(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    fragile = fragile_onnx(V1[0], 1.0, limit=1000.0)
    v2 = complete_bundle(
        tmp_path / "linear-2.bundle", version="2", model_bytes=fragile, bias=1.0, key=keys.private
    )
    fleet.transfer(v2)
    cmd_id = fleet.activate("2", grace_s=120)
    fleet.wait_ack("active", cmd_id=cmd_id)
    assert device.result_for(device.send()).model_version == "2"  # it answers normal readings
    device.send(np.array([70.0, 0.3, 5000.0]))  # and fails on this one
    rolled = fleet.wait_ack("rolled_back", cmd_id=cmd_id)
    assert rolled.ok and "inference errors" in (rolled.reason or "")
    assert (rolled.version, rolled.previous_version, rolled.details["serving"]) == ("2", "1", "1")
    assert not any(a.step == "kept" for a in fleet.acks())
    assert device.result_for(device.send()).model_version == "1"
    pointer = json.loads((device.state_dir / "models" / "active.json").read_text())
    assert pointer["version"] == "1"
    # The retained desired state naming the rolled-back bundle does not retry it.
    again = fleet.desire(v2)
    refused = fleet.wait_ack("refused", cmd_id=again)
    assert not refused.ok and "rolled_back" in (refused.reason or "")


def test_a_model_answering_out_of_distribution_is_rolled_back(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    # The model works, but its outputs sit far from the distribution its bundle promises.
    v2 = complete_bundle(
        tmp_path / "linear-2.bundle", version="2", bias=400.0, baseline_bias=0.5, key=keys.private
    )
    fleet.transfer(v2)
    cmd_id = fleet.activate("2", grace_s=120)
    fleet.wait_ack("active", cmd_id=cmd_id)
    feed_until(device, has_ack(device, "rolled_back", cmd_id))
    rolled = fleet.wait_ack("rolled_back", cmd_id=cmd_id)
    assert "output score is out of distribution" in (rolled.reason or ""), rolled.reason
    assert device.result_for(device.send()).model_version == "1"


def test_a_healthy_model_is_kept_after_its_grace_period_and_can_be_rolled_back(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    v2 = complete_bundle(tmp_path / "linear-2.bundle", version="2", bias=0.7, key=keys.private)
    fleet.transfer(v2)
    cmd_id = fleet.activate("2", grace_s=2.0)
    feed_until(device, has_ack(device, "kept", cmd_id))
    kept = fleet.wait_ack("kept", cmd_id=cmd_id)
    assert kept.ok and int(kept.details["windows"]) > 0 and kept.details["errors"] == 0
    back = fleet.rollback()
    rolled = fleet.wait_ack("rolled_back", cmd_id=back)
    assert rolled.ok and (rolled.version, rolled.details["serving"]) == ("2", "1")
    assert device.result_for(device.send()).model_version == "1"
    pointer = json.loads((device.state_dir / "models" / "active.json").read_text())
    assert (pointer["version"], pointer["history"]) == ("1", [])


@pytest.fixture
def strict_shadow_device(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str, keys: Keys
) -> Iterator[Device]:
    yield from start_device(
        tmp_path,
        broker,
        probe,
        topic_prefix,
        keys,
        extra="[lifecycle]\nshadow_min_agreement = 0.9\n",
    )


def test_shadow_runs_report_agreement_and_can_refuse(
    tmp_path: Path, strict_shadow_device: Device, keys: Keys
) -> None:
    device = strict_shadow_device
    fleet = device.fleet
    # Another bias: every shadow answer differs from the serving model's beyond tolerance.
    differs = complete_bundle(tmp_path / "linear-2.bundle", version="2", bias=3.0, key=keys.private)
    fleet.transfer(differs)
    refused_id = fleet.activate("2", shadow_windows=10, grace_s=0)
    feed_until(device, has_ack(device, "shadow", refused_id))
    shadow = fleet.wait_ack("shadow", cmd_id=refused_id)
    assert not shadow.ok and shadow.details["agreement"] == 0.0
    assert int(shadow.details["windows"]) >= 10
    assert not any(a.step == "active" and a.cmd_id == refused_id for a in fleet.acks())
    assert device.result_for(device.send()).model_version == "1"

    # The same model again under another version: full agreement, then the swap.
    same = complete_bundle(tmp_path / "linear-3.bundle", version="3", bias=V1[1], key=keys.private)
    fleet.transfer(same)
    kept_id = fleet.activate("3", shadow_windows=10, grace_s=0)
    feed_until(device, has_ack(device, "kept", kept_id))
    shadow = fleet.wait_ack("shadow", cmd_id=kept_id)
    assert shadow.ok and shadow.details["agreement"] == 1.0
    steps = [a.step for a in fleet.acks() if a.cmd_id == kept_id]
    assert steps.index("golden") < steps.index("shadow") < steps.index("active")
    assert device.result_for(device.send()).model_version == "3"
