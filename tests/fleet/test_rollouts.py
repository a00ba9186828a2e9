"""Rollouts end to end against a real broker: `fleet serve` as a subprocess, the CLI as a
subprocess, and simulated devices speaking the real control protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.registry import SqliteRegistry
from fleet.swarm import Swarm
from tests.fleet.support import FleetServe, keypair, signed_bundle, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.processes import run

pytestmark = pytest.mark.slow


class Fleet:
    """One test's fleet: registry file, bundle store, CLI arguments."""

    def __init__(self, tmp: Path, port: int, prefix: str) -> None:
        self.tmp = tmp
        self.port = port
        self.prefix = prefix
        self.db = tmp / "fleet.db"
        self.args = [
            "--broker", f"127.0.0.1:{port}", "--prefix", prefix,
            "--registry", str(self.db), "--store", str(tmp / "store"),
        ]  # fmt: skip
        self.key, self.pub = keypair(tmp)

    def cli(self, *args: str, check: bool = True) -> str:
        result = run("fleet", *self.args, *args, check=check)
        return result.stdout

    def serve(self, name: str = "serve", *extra: str) -> FleetServe:
        return FleetServe(self.args, self.tmp / f"{name}.log", *extra)

    def publish(self, version: str) -> None:
        bundle = signed_bundle(self.tmp / f"linear-{version}.bundle", self.key, version=version)
        self.cli("models", "publish", str(bundle), "--public-key", str(self.pub))

    def start(self, *args: str) -> str:
        out = json.loads(self.cli("rollout", "start", *args, "--json"))
        rollout_id: str = out["id"]
        return rollout_id

    def registry(self) -> SqliteRegistry:
        return SqliteRegistry(self.db)

    def rollout_state(self, rollout_id: str) -> str:
        with self.registry() as registry:
            rollout = registry.rollout(rollout_id)
            assert rollout is not None
            return rollout.state

    def device_states(self, rollout_id: str) -> dict[str, str]:
        with self.registry() as registry:
            return {e.device: e.state for e in registry.rollout_devices(rollout_id)}

    def wait_devices(self, count: int, *, exactly: bool = False) -> None:
        def known() -> bool:
            with self.registry() as registry:
                online = len([d for d in registry.devices() if d.state == "online"])
            return online == count if exactly else online >= count

        wait_until(known, f"{count} devices online in the registry")


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto, topic_prefix: str) -> Fleet:
    return Fleet(tmp_path, broker.port, topic_prefix)


@pytest.fixture
def serve(fleet: Fleet) -> Iterator[FleetServe]:
    with fleet.serve() as server:
        yield server


def test_canary_then_waves_then_complete(fleet: Fleet, serve: FleetServe) -> None:
    with Swarm("127.0.0.1", fleet.port, fleet.prefix, count=5, model="linear", shards=2) as swarm:
        fleet.wait_devices(5)
        fleet.publish("2")
        rollout = fleet.start(
            "linear@2", "--to", "line=line-2", "--canary", "1", "--waves", "50,100"
        )
        wait_until(lambda: fleet.rollout_state(rollout) == "completed", "the rollout to complete")

        assert swarm.versions() == {f"sim-{i:03d}": "2" for i in range(5)}
        with fleet.registry() as registry:
            entries = registry.rollout_devices(rollout)
            stored = registry.rollout(rollout)
        assert stored is not None and stored.stages == ["canary", "wave 50%", "wave 100%"]
        assert [(e.device, e.stage, e.state) for e in entries] == [
            ("sim-000", 0, "done"),
            ("sim-001", 1, "done"),
            ("sim-002", 1, "done"),
            ("sim-003", 2, "done"),
            ("sim-004", 2, "done"),
        ]
        # Each stage began only after the one before it was kept everywhere.
        kept = {d.id: next(a.ts for a in d.acks if a.step == "kept") for d in swarm.devices}
        first = {d.id: d.acks[0].ts for d in swarm.devices}
        assert kept["sim-000"] <= min(first[f"sim-00{i}"] for i in (1, 2))
        assert max(kept["sim-001"], kept["sim-002"]) <= min(first["sim-003"], first["sim-004"])
        # Every device fetched the bundle in chunks and checked it.
        assert all(d.store.get("linear@2") for d in swarm.devices)

        status = fleet.cli("rollout", "status", rollout)
        assert "COMPLETED" in status and "canary" in status and "wave 100%" in status
        assert status.count(" done") >= 5
        listing = fleet.cli("devices", "list", "--line", "line-2")
        assert listing.count("linear@2") >= 5  # model and desired model


def test_a_model_the_canary_refuses_halts_and_nothing_else_moves(
    fleet: Fleet, serve: FleetServe
) -> None:
    with Swarm(
        "127.0.0.1", fleet.port, fleet.prefix, count=5, model="linear", refuse={"2"}
    ) as swarm:
        fleet.wait_devices(5)
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--waves", "50,100")
        wait_until(lambda: fleet.rollout_state(rollout) == "halted", "the rollout to halt")

        states = fleet.device_states(rollout)
        assert states["sim-000"] == "failed"
        assert all(states[f"sim-00{i}"] == "pending" for i in range(1, 5))
        assert swarm.versions() == {f"sim-{i:03d}": "1" for i in range(5)}
        assert all(not d.acks for d in swarm.devices[1:])  # they were never asked
        status = fleet.cli("rollout", "status", rollout)
        assert "HALTED" in status and "golden" in status


@pytest.mark.parametrize("fleet_holds_previous", [False, True], ids=["rollback", "resend"])
def test_a_failed_wave_rolls_back_the_devices_already_moved(
    fleet: Fleet, serve: FleetServe, fleet_holds_previous: bool
) -> None:
    good = Swarm("127.0.0.1", fleet.port, fleet.prefix, count=3, name="a", model="linear")
    bad = Swarm(
        "127.0.0.1", fleet.port, fleet.prefix, count=2, name="b", model="linear", refuse={"2"}
    )
    with good, bad:
        fleet.wait_devices(5)
        if fleet_holds_previous:
            # The fleet holds version 1, so a revert is a desired state of 1; the simulated
            # devices never stored 1 (they started on it), so each one asks for the bundle back.
            fleet.publish("1")
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--waves", "50,100")
        wait_until(lambda: fleet.rollout_state(rollout) == "halted", "the rollout to halt")

        def reverted() -> bool:
            states = fleet.device_states(rollout)
            return all(states[f"a-00{i}"] == "reverted" for i in range(3))

        wait_until(reverted, "the moved devices to be rolled back")
        assert good.versions() == {"a-000": "1", "a-001": "1", "a-002": "1"}
        assert bad.versions() == {"b-000": "1", "b-001": "1"}
        with fleet.registry() as registry:
            stored = registry.rollout(rollout)
        assert stored is not None and stored.reason is not None and "golden" in stored.reason
        if fleet_holds_previous:
            for device in good.devices:
                assert "linear@1" in device.store  # sent in chunks, checked, then activated
                assert any(a.step == "need_bundle" and a.version == "1" for a in device.acks)


def test_an_offline_wave_device_converges_when_it_reconnects(
    fleet: Fleet, serve: FleetServe
) -> None:
    # "tardy-000" sorts after the "sim-" devices: it lands in the wave, not the canary.
    late = Swarm("127.0.0.1", fleet.port, fleet.prefix, count=1, name="tardy", model="linear")
    late.start()
    with Swarm("127.0.0.1", fleet.port, fleet.prefix, count=4, model="linear") as swarm:
        fleet.wait_devices(5)
        late.stop(status="offline")
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--waves", "100")
        wait_until(lambda: fleet.rollout_state(rollout) == "completed", "the rollout to complete")
        assert fleet.device_states(rollout)["tardy-000"] == "offline"
        assert set(swarm.versions().values()) == {"2"}
        assert late.versions() == {"tardy-000": "1"}

        late.start()  # back: the retained desired state brings it along
        wait_until(
            lambda: fleet.device_states(rollout)["tardy-000"] == "done", "tardy-000 to converge"
        )
        assert late.versions() == {"tardy-000": "2"}
        late.stop()


def test_an_offline_canary_holds_its_stage_and_halts_when_it_times_out(
    fleet: Fleet, serve: FleetServe
) -> None:
    # "a-000" sorts first: it is the canary, and it is offline when the rollout starts.
    canary = Swarm("127.0.0.1", fleet.port, fleet.prefix, count=1, name="a", model="linear")
    canary.start()
    with Swarm("127.0.0.1", fleet.port, fleet.prefix, count=3, model="linear") as swarm:
        fleet.wait_devices(4)
        canary.stop(status="offline")
        fleet.wait_devices(3, exactly=True)
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--timeout", "2")
        wait_until(lambda: fleet.rollout_state(rollout) != "running", "the rollout to stop")

        assert fleet.rollout_state(rollout) == "halted"
        states = fleet.device_states(rollout)
        assert states == {"a-000": "timed_out", "sim-000": "pending", "sim-001": "pending",
                          "sim-002": "pending"}  # fmt: skip
        assert all(not d.acks for d in swarm.devices)  # the wave was never sent
        status = fleet.cli("rollout", "status", rollout)
        assert "HALTED" in status and "offline: no result within 2 s" in status

        canary.start()  # back after the verdict: its desired state was cleared, it stays on 1
        fleet.wait_devices(4)
        other = fleet.start("linear@2", "--to", "device=sim-000", "--canary", "0")
        wait_until(lambda: fleet.rollout_state(other) == "completed", "a later rollout")
        assert canary.versions() == {"a-000": "1"}
        assert not canary.devices[0].acks
        canary.stop()


def test_an_offline_canary_that_returns_in_time_lets_the_rollout_proceed(
    fleet: Fleet, serve: FleetServe
) -> None:
    canary = Swarm("127.0.0.1", fleet.port, fleet.prefix, count=1, name="a", model="linear")
    canary.start()
    outsider = Swarm(
        "127.0.0.1", fleet.port, fleet.prefix, count=1, name="z", model="linear",
        labels={"line": "line-9"},
    )  # fmt: skip
    with outsider, Swarm("127.0.0.1", fleet.port, fleet.prefix, count=3, model="linear") as swarm:
        fleet.wait_devices(5)
        canary.stop(status="offline")
        fleet.wait_devices(4, exactly=True)
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "line=line-2", "--canary", "1")
        wait_until(
            lambda: fleet.device_states(rollout)["a-000"] == "offline", "the canary's desired state"
        )
        # Another rollout completing proves the worker ticked many times meanwhile.
        other = fleet.start("linear@2", "--to", "line=line-9", "--canary", "0")
        wait_until(lambda: fleet.rollout_state(other) == "completed", "the other rollout")
        assert fleet.rollout_state(rollout) == "running"
        assert {
            d: s for d, s in fleet.device_states(rollout).items() if d != "a-000"
        } == dict.fromkeys(("sim-000", "sim-001", "sim-002"), "pending")
        assert all(not d.acks for d in swarm.devices)

        canary.start()  # back within the timeout: the retained desired state brings it along
        wait_until(lambda: fleet.rollout_state(rollout) == "completed", "the rollout to complete")
        assert fleet.device_states(rollout) == dict.fromkeys(
            ("a-000", "sim-000", "sim-001", "sim-002"), "done"
        )
        assert set(swarm.versions().values()) == {"2"} and canary.versions() == {"a-000": "2"}
        kept = next(a.ts for a in canary.devices[0].acks if a.step == "kept")
        assert kept <= min(d.acks[0].ts for d in swarm.devices)  # the wave came after
        canary.stop()


def test_a_broken_transfer_resumes_with_the_missing_chunks_only(fleet: Fleet) -> None:
    dropped: list[int] = []

    def drop_once(device: object, chunk: object) -> bool:
        index = getattr(chunk, "index", -1)
        if index == 1 and not dropped:
            dropped.append(index)
            return True
        return False

    with (
        fleet.serve("serve", "--chunk-size", "256"),
        Swarm(
            "127.0.0.1", fleet.port, fleet.prefix, count=1, model="linear", drop_chunk=drop_once
        ) as swarm,
    ):
        fleet.wait_devices(1)
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "0")
        device = swarm.devices[0]
        wait_until(lambda: len(device.chunks_received) >= 3, "the first chunks")
        assert 1 not in device.chunks_received
        swarm.stop(status=None)  # the connection breaks mid-transfer
        first_round = list(device.chunks_received)
        swarm.start()
        wait_until(
            lambda: fleet.device_states(rollout)["sim-000"] == "done", "the device to finish"
        )
        resent = device.chunks_received[len(first_round) :]
        assert 1 in resent
        assert not set(resent) & set(first_round)  # nothing it already held was sent again
        assert swarm.versions() == {"sim-000": "2"}


def test_operator_pause_resume_rollback_abort(fleet: Fleet) -> None:
    with Swarm("127.0.0.1", fleet.port, fleet.prefix, count=3, model="linear") as swarm:
        with fleet.serve():
            fleet.wait_devices(3)
        fleet.publish("2")
        paused = fleet.start("linear@2", "--to", "device=sim-000", "--canary", "0")
        assert "running -> paused" in fleet.cli("rollout", "pause", paused)
        assert run("fleet", *fleet.args, "rollout", "pause", paused).returncode == 1
        # A log of its own: the first worker's "serving" line must not stand in for this one's.
        with fleet.serve("serve-again"):
            # Another rollout completing proves the worker ticked many times meanwhile.
            other = fleet.start(
                "linear@2", "--to", "device=sim-001,device=sim-002", "--canary", "0"
            )
            wait_until(lambda: fleet.rollout_state(other) == "completed", "the other rollout")
            assert fleet.device_states(paused) == {"sim-000": "pending"}
            assert swarm.versions()["sim-000"] == "1"

            fleet.cli("rollout", "resume", paused)
            wait_until(lambda: fleet.rollout_state(paused) == "completed", "the resumed rollout")
            fleet.cli("rollout", "rollback", other)
            wait_until(lambda: fleet.rollout_state(other) == "rolled_back", "the rollback")
            wait_until(
                lambda: swarm.versions() == {"sim-000": "2", "sim-001": "1", "sim-002": "1"},
                "the rolled back devices on version 1",
            )
            assert run("fleet", *fleet.args, "rollout", "abort", other).returncode == 1


def test_a_device_that_never_answers_times_out_and_halts_the_rollout(
    fleet: Fleet, serve: FleetServe
) -> None:
    with Swarm(
        "127.0.0.1", fleet.port, fleet.prefix, count=3, model="linear", silent={"sim-000"}
    ) as swarm:
        fleet.wait_devices(3)
        fleet.publish("2")
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--timeout", "2")
        wait_until(lambda: fleet.rollout_state(rollout) == "halted", "the rollout to halt")
        states = fleet.device_states(rollout)
        assert states == {"sim-000": "timed_out", "sim-001": "pending", "sim-002": "pending"}
        assert swarm.versions() == {"sim-000": "1", "sim-001": "1", "sim-002": "1"}
        assert "no result within 2 s" in fleet.cli("rollout", "status", rollout)


def test_abort_leaves_the_moved_devices_moved_and_rollback_takes_them_back(
    fleet: Fleet, serve: FleetServe
) -> None:
    with Swarm("127.0.0.1", fleet.port, fleet.prefix, count=3, model="linear") as swarm:
        fleet.wait_devices(3)
        fleet.publish("2")
        # A long soak keeps the rollout between its canary and its wave while the operator acts.
        rollout = fleet.start("linear@2", "--to", "all", "--canary", "1", "--soak", "3600")
        wait_until(lambda: fleet.device_states(rollout)["sim-000"] == "done", "the canary")
        assert f"`fleet rollout rollback {rollout}` reverts them" in fleet.cli(
            "rollout", "abort", rollout
        )
        wait_until(lambda: fleet.rollout_state(rollout) == "aborted", "the abort")

        assert fleet.device_states(rollout) == {
            "sim-000": "done", "sim-001": "cancelled", "sim-002": "cancelled"
        }  # fmt: skip
        assert swarm.versions() == {"sim-000": "2", "sim-001": "1", "sim-002": "1"}
        assert all(not d.acks for d in swarm.devices[1:])  # the wave was never sent

        fleet.cli("rollout", "rollback", rollout)
        wait_until(lambda: fleet.rollout_state(rollout) == "rolled_back", "the rollback")
        wait_until(
            lambda: fleet.device_states(rollout)["sim-000"] == "reverted", "the canary's revert"
        )
        assert swarm.versions() == {"sim-000": "1", "sim-001": "1", "sim-002": "1"}
        assert all(not d.acks for d in swarm.devices[1:])
