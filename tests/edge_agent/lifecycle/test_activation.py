"""Activation over the control protocol, with a real agent process and a real broker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import cast

import numpy as np

from edge_agent.contracts.bundle import generate_keypair
from edge_agent.contracts.payloads import StatusPayload, decode
from tests.edge_agent.lifecycle.conftest import Device, Keys
from tests.support.lifecycle import complete_bundle, tamper

STEPS = ["verified", "features", "loaded", "warmed", "golden", "active", "kept"]


def expected_score(row: np.ndarray, weights: tuple[float, ...], bias: float) -> float:
    return float(np.asarray(row, dtype=np.float32).astype(np.float64) @ np.asarray(weights) + bias)


def test_desired_state_transfers_activates_and_keeps(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    v2 = complete_bundle(
        tmp_path / "linear-2.bundle",
        version="2",
        weights=(2.0, 0.0, 1.0),
        bias=-3.0,
        key=keys.private,
    )
    desired_id = fleet.desire(v2, grace_s=0.0)
    need = fleet.wait_ack("need_bundle", cmd_id=desired_id)
    assert need.ok and need.details["have_chunks"] == ""
    assert (need.version, need.previous_version) == ("2", "1")

    # A transfer that breaks off after two chunks resumes where it stopped.
    offer_id = fleet.offer(v2, chunk_size=512)
    first = fleet.wait_ack("offer", cmd_id=offer_id)
    assert first.details["have_chunks"] == ""
    total = fleet.send_chunks(v2, chunk_size=512, only=[0, 1])
    assert total > 3
    resumed_id = fleet.offer(v2, chunk_size=512, cmd_id=f"offer-{uuid.uuid4().hex[:6]}")
    resumed = fleet.wait_ack("offer", cmd_id=resumed_id)
    assert resumed.details["have_chunks"] == "0,1"
    fleet.send_chunks(v2, chunk_size=512, only=list(range(2, total)))
    received = fleet.wait_ack("received", cmd_id=resumed_id)
    assert received.ok

    # The desired state names this bundle: activation follows by itself, every step acked.
    kept = fleet.wait_ack("kept", version="2")
    assert kept.ok and kept.cmd_id == desired_id
    steps = [a.step for a in fleet.acks() if a.cmd_id == desired_id and a.step in STEPS]
    assert steps == STEPS
    assert all(
        (a.model, a.version, a.previous_version) == ("linear", "2", "1")
        for a in fleet.acks()
        if a.cmd_id == desired_id and a.step in STEPS
    )
    row = np.array([71.0, 0.25, 4.0])
    assert device.result_for(device.send(row)).model_version == "2"
    assert abs(cast(float, device.result_for(device.sent - 1 + 1_700_000_000.0).outputs["score"])
               - expected_score(row, (2.0, 0.0, 1.0), -3.0)) < 1e-3  # fmt: skip

    # One folder per version, the pointer on the kept version.
    store = device.state_dir / "models"
    assert sorted(p.name for p in (store / "linear").iterdir()) == ["1", "2"]
    pointer = json.loads((store / "active.json").read_text())
    assert pointer == {"model": "linear", "version": "2", "history": ["1"]}

    # A reconnect re-delivers the retained desired state: nothing to do, ack says active.
    again = fleet.desire(v2)
    assert fleet.wait_ack("active", cmd_id=again).details.get("already") == 1


def test_a_cleared_desired_state_is_forgotten(tmp_path: Path, device: Device, keys: Keys) -> None:
    fleet = device.fleet
    v2 = complete_bundle(tmp_path / "linear-2.bundle", version="2", key=keys.private)
    desired_id = fleet.desire(v2)
    fleet.wait_ack("need_bundle", cmd_id=desired_id)
    fleet.probe.publish(device.topics.desired, b"", retain=True)  # the fleet takes it back
    # The bundle arrives afterwards: it is kept, but nothing asks for it to serve any more.
    fleet.transfer(v2)
    time.sleep(2)  # room for an activation that must not happen
    assert [a.step for a in fleet.acks() if a.cmd_id == desired_id] == ["need_bundle"]
    assert not any(a.step in STEPS for a in fleet.acks()), [a.step for a in fleet.acks()]
    assert device.result_for(device.send()).model_version == "1"
    # An explicit command still activates it.
    activated = fleet.activate("2")
    assert fleet.wait_ack("active", cmd_id=activated).ok


def test_refusals_leave_the_old_model_serving(tmp_path: Path, device: Device, keys: Keys) -> None:
    fleet = device.fleet
    other_private, _other_public = generate_keypair()
    (tmp_path / "other.key").write_bytes(other_private)
    good = complete_bundle(tmp_path / "good-2.bundle", version="2", key=keys.private)
    cases = {
        "tampered": (tamper(good, tmp_path / "tampered-2.bundle"), "verified", "model.onnx"),
        "wrong key": (
            complete_bundle(tmp_path / "k-3.bundle", version="3", key=tmp_path / "other.key"),
            "verified",
            "signature",
        ),
        "features": (
            complete_bundle(
                tmp_path / "f-4.bundle", version="4", features=["a", "b", "c"], key=keys.private
            ),
            "features",
            "the config feeds",
        ),
        "golden": (
            complete_bundle(
                tmp_path / "g-5.bundle", version="5", golden_offset=0.5, key=keys.private
            ),
            "golden",
            "golden vectors disagree",
        ),
    }
    for name, (bundle, step, words) in cases.items():
        fleet.transfer(bundle)
        version = "2" if name == "tampered" else bundle.name.split("-")[1].split(".")[0]
        cmd_id = fleet.activate(version)
        refusal = fleet.wait_ack(step, cmd_id=cmd_id)
        assert not refusal.ok, name
        assert refusal.reason is not None and words in refusal.reason, (name, refusal.reason)
        assert (refusal.version, refusal.previous_version) == (version, "1")
        assert not [a for a in fleet.acks() if a.cmd_id == cmd_id and a.step == "active"]
        # The old model answers throughout.
        row = np.array([70.0, 0.3, 5.0])
        result = device.result_for(device.send(row))
        assert result.model_version == "1", name
        score = cast(float, result.outputs["score"])
        assert abs(score - expected_score(row, (1.0, 10.0, 100.0), 0.5)) < 1e-3


def test_malformed_and_unknown_commands_are_refused(device: Device) -> None:
    fleet = device.fleet
    bad = {
        "not-json": b"{nope",
        "unknown-kind": json.dumps(
            {"schema_version": 1, "cmd_id": "c-kind", "ts": 1.0, "kind": "reboot"}
        ).encode(),
        "future-schema": json.dumps(
            {"schema_version": 99, "cmd_id": "c-schema", "ts": 1.0, "kind": "rollback"}
        ).encode(),
        "missing-field": json.dumps(
            {"schema_version": 1, "cmd_id": "c-field", "ts": 1.0, "kind": "activate"}
        ).encode(),
    }
    for payload in bad.values():
        fleet.command(payload)
    fleet.command(b"[1, 2]", topic=device.topics.transfer)
    fleet.command(
        json.dumps(
            {"schema_version": 1, "cmd_id": "c-desired", "ts": 1.0, "kind": "rollback"}
        ).encode(),
        topic=device.topics.desired,
    )
    device.probe.wait_for(lambda _m: len([a for a in fleet.acks() if a.step == "refused"]) >= 6)
    refusals = {a.cmd_id: a for a in fleet.acks() if a.step == "refused"}
    assert not any(a.ok for a in refusals.values())
    assert "reboot" in (refusals["c-kind"].reason or "") or "kind" in (
        refusals["c-kind"].reason or ""
    )
    assert "schema_version 99" in (refusals["c-schema"].reason or "")
    assert "model" in (refusals["c-field"].reason or "")
    assert "desired-state only" in (refusals["c-desired"].reason or "")
    assert refusals["unknown"].command in {"unknown", "transfer"}
    # Rolling back with nothing to go back to, and activating what is not there, are refused too.
    no_previous = fleet.rollback()
    assert not fleet.wait_ack("refused", cmd_id=no_previous).ok
    missing = fleet.activate("9")
    assert "not in the model store" in (fleet.wait_ack("refused", cmd_id=missing).reason or "")
    assert device.result_for(device.send()).model_version == "1"


def test_a_bad_chunk_is_refused_and_sent_again(tmp_path: Path, device: Device, keys: Keys) -> None:
    fleet = device.fleet
    v2 = complete_bundle(tmp_path / "linear-2.bundle", version="2", key=keys.private)
    offer_id = fleet.offer(v2, chunk_size=2048)
    fleet.wait_ack("offer", cmd_id=offer_id)
    from edge_agent.contracts.payloads import TransferChunkPayload

    bogus = TransferChunkPayload(
        model="linear", version="2", index=0, total=3, sha256="0" * 64, data="aGVsbG8="
    )
    fleet.command(bogus.to_json(), topic=device.topics.transfer)
    refused = fleet.wait_ack("chunk", cmd_id=offer_id)
    assert not refused.ok and refused.details["index"] == 0 and "sha256" in (refused.reason or "")
    fleet.send_chunks(v2, chunk_size=2048)
    assert fleet.wait_ack("received", cmd_id=offer_id).ok


def test_swap_under_a_steady_stream_answers_every_window_once(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    new = ((2.0, 0.0, 1.0), -3.0)
    old = ((1.0, 10.0, 100.0), 0.5)
    v2 = complete_bundle(
        tmp_path / "linear-2.bundle", version="2", weights=new[0], bias=new[1], key=keys.private
    )
    fleet.transfer(v2)
    rng = np.random.default_rng(3)
    sent: dict[float, np.ndarray] = {}

    def send_rows(count: int) -> None:
        for row in rng.normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0], size=(count, 3)):
            sent[device.send(row)] = row

    send_rows(100)
    activated = fleet.activate("2")
    # Readings keep streaming while the new version is checked and swapped in, however long that
    # takes on a busy machine, and for a while after it serves.
    deadline = time.monotonic() + 60
    while not any(a.step == "active" and a.cmd_id == activated for a in fleet.acks()):
        assert time.monotonic() < deadline, "version 2 never became active"
        send_rows(10)
        time.sleep(0.02)
    send_rows(100)
    fleet.wait_ack("kept", cmd_id=activated)
    device.probe.wait_for(lambda _m: len({r.window_end for r in device.results()}) >= len(sent))
    results = sorted(device.results(), key=lambda r: r.window_end)
    assert [r.window_end for r in results] == sorted(sent)  # each window answered exactly once
    versions = [r.model_version for r in results]
    switch = versions.index("2")
    assert switch > 0 and versions[switch:] == ["2"] * (len(versions) - switch)
    assert versions[:switch] == ["1"] * switch
    for result in results:
        weights, bias = old if result.model_version == "1" else new
        want = expected_score(sent[result.window_end], weights, bias)
        assert abs(cast(float, result.outputs["score"]) - want) < 1e-3


def test_the_kept_version_serves_after_a_restart(
    tmp_path: Path, device: Device, keys: Keys
) -> None:
    fleet = device.fleet
    v2 = complete_bundle(tmp_path / "linear-2.bundle", version="2", bias=0.9, key=keys.private)
    fleet.transfer(v2)
    fleet.wait_ack("kept", cmd_id=fleet.activate("2"))
    assert device.agent.stop() == 0

    def onlines() -> int:
        statuses = device.probe.on_topic(device.topics.status)
        return sum(decode(StatusPayload, m.payload).state == "online" for m in statuses)

    before = onlines()
    # The config still names bundle 1; the store's active pointer decides.
    device.agent.start()
    device.probe.wait_for(lambda _m: onlines() > before, 60)
    online = decode(StatusPayload, device.probe.on_topic(device.topics.status)[-1].payload)
    assert online.model_version == "2"
    restarted = device.send()
    assert device.result_for(restarted, timeout=60).model_version == "2"
