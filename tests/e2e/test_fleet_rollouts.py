"""The fleet and real agents: `fleet serve`, the `fleet` CLI and five `edge-agent` processes on
one real broker, moving real signed bundles through the whole control protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from fleet.registry import SqliteRegistry
from tests.fleet.support import FleetServe, keypair, wait_until
from tests.support.agent_config import write_agent_config
from tests.support.lifecycle import complete_bundle
from tests.support.mosquitto import Mosquitto
from tests.support.processes import AgentProcess, run

pytestmark = pytest.mark.slow


class Plant:
    """Agents, a fleet worker and the CLI around one registry."""

    def __init__(self, tmp: Path, broker: Mosquitto, prefix: str) -> None:
        self.tmp = tmp
        self.broker = broker
        self.prefix = prefix
        self.db = tmp / "fleet.db"
        self.key, self.pub = keypair(tmp)
        self.seed = complete_bundle(tmp / "linear-1.bundle", version="1", key=self.key)
        self.args = [
            "--broker", f"127.0.0.1:{broker.port}", "--prefix", prefix,
            "--registry", str(self.db), "--store", str(tmp / "store"),
        ]  # fmt: skip
        self.agents: dict[str, AgentProcess] = {}

    def agent(self, device: str, *, extra: str = "") -> AgentProcess:
        config = write_agent_config(
            self.tmp / f"{device}.toml",
            port=self.broker.port,
            prefix=self.prefix,
            bundle=self.seed,
            state_dir=self.tmp / device,
            input_topic=f"{self.prefix}-in/line-2/+/reading",
            device=device,
            extra=extra,
        )
        line = f'bundle = "{self.seed}"\n'
        config.write_text(config.read_text().replace(line, line + f'public_key = "{self.pub}"\n'))
        process = AgentProcess(config, self.tmp / f"{device}.log")
        self.agents[device] = process
        return process.start()

    def cli(self, *args: str) -> str:
        return run("fleet", *self.args, *args, check=True).stdout

    def publish(self, version: str, *, golden_offset: float = 0.0) -> None:
        bundle = complete_bundle(
            self.tmp / f"linear-{version}.bundle", version=version, key=self.key,
            golden_offset=golden_offset,
        )  # fmt: skip
        self.cli("models", "publish", str(bundle), "--public-key", str(self.pub))

    def start(self, *args: str) -> str:
        rollout_id: str = json.loads(self.cli("rollout", "start", *args, "--json"))["id"]
        return rollout_id

    def state(self, rollout_id: str) -> str:
        with SqliteRegistry(self.db) as registry:
            found = registry.rollout(rollout_id)
            return found.state if found is not None else "missing"

    def device_states(self, rollout_id: str) -> dict[str, str]:
        with SqliteRegistry(self.db) as registry:
            return {e.device: e.state for e in registry.rollout_devices(rollout_id)}

    def versions(self) -> dict[str, str | None]:
        with SqliteRegistry(self.db) as registry:
            return {d.id: d.model_version for d in registry.devices()}

    def online(self, count: int) -> None:
        def ready() -> bool:
            with SqliteRegistry(self.db) as registry:
                return sum(d.state == "online" for d in registry.devices()) == count

        wait_until(ready, f"{count} agents online", timeout=90)


@pytest.fixture
def plant(tmp_path: Path, broker: Mosquitto, topic_prefix: str) -> Iterator[Plant]:
    site = Plant(tmp_path, broker, topic_prefix)
    with ExitStack() as stack, FleetServe(site.args, tmp_path / "serve.log") as server:
        stack.callback(lambda: [a.stop() for a in site.agents.values() if a.alive()])
        yield site
        assert "Traceback" not in server.output()
    for agent in site.agents.values():
        assert "Traceback" not in agent.output(), agent.output()


def test_five_agents_take_a_rollout_canary_then_waves(plant: Plant) -> None:
    devices = [f"press-{i:02d}" for i in range(1, 6)]
    for device in devices:
        plant.agent(device)
    plant.online(5)
    plant.publish("2")
    rollout = plant.start(
        "linear@2", "--to", "line=line-2", "--canary", "1", "--waves", "40,100", "--grace", "0.5"
    )
    wait_until(lambda: plant.state(rollout) == "completed", "the rollout to complete", 180)
    assert plant.device_states(rollout) == dict.fromkeys(devices, "done")
    wait_until(
        lambda: plant.versions() == dict.fromkeys(devices, "2"), "every agent reporting 2", 60
    )
    status = plant.cli("rollout", "status", rollout)
    assert "COMPLETED" in status and "canary" in status and "wave 40%" in status
    assert "1/1" in status and "3/3" in status


def test_a_model_failing_its_golden_vectors_halts_at_the_canary(plant: Plant) -> None:
    devices = [f"press-{i:02d}" for i in range(1, 6)]
    for device in devices:
        plant.agent(device)
    plant.online(5)
    plant.publish("3", golden_offset=5.0)
    rollout = plant.start("linear@3", "--to", "all", "--canary", "1", "--waves", "100")
    wait_until(lambda: plant.state(rollout) == "halted", "the rollout to halt", 120)
    states = plant.device_states(rollout)
    assert states["press-01"] == "failed"
    assert all(states[d] == "pending" for d in devices[1:])  # nothing else moved
    assert plant.versions() == dict.fromkeys(devices, "1")
    status = plant.cli("rollout", "status", rollout)
    assert "HALTED" in status and "golden" in status


def test_an_agent_offline_during_the_rollout_converges_when_it_returns(plant: Plant) -> None:
    for device in ("press-01", "press-02", "press-03"):
        plant.agent(device)
    plant.online(3)
    assert plant.agents["press-03"].stop() == 0  # a clean stop: its status says stopped
    plant.publish("2")
    rollout = plant.start("linear@2", "--to", "all", "--canary", "1", "--grace", "0.5")
    wait_until(lambda: plant.state(rollout) == "completed", "the rollout to complete", 180)
    assert plant.device_states(rollout)["press-03"] == "offline"
    plant.agents["press-03"].start()
    wait_until(
        lambda: plant.device_states(rollout)["press-03"] == "done", "press-03 to converge", 120
    )
    wait_until(lambda: plant.versions().get("press-03") == "2", "press-03 reporting 2", 60)


def test_a_rollback_sends_the_previous_bundle_to_agents_that_no_longer_hold_it(
    plant: Plant,
) -> None:
    # keep_previous = 0: once 2 is active the agents delete 1 from their model stores.
    devices = ("press-01", "press-02")
    for device in devices:
        plant.agent(device, extra="[lifecycle]\nkeep_previous = 0\n")
    plant.online(2)
    plant.cli("models", "publish", str(plant.seed), "--public-key", str(plant.pub))
    plant.publish("2")
    rollout = plant.start("linear@2", "--to", "all", "--canary", "1", "--grace", "0.5")
    wait_until(lambda: plant.state(rollout) == "completed", "the rollout to complete", 180)
    wait_until(lambda: plant.versions() == dict.fromkeys(devices, "2"), "both on 2", 60)
    for device in devices:
        assert not (plant.tmp / device / "models" / "linear" / "1").exists()

    plant.cli("rollout", "rollback", rollout)
    wait_until(
        lambda: plant.device_states(rollout) == dict.fromkeys(devices, "reverted"),
        "both agents to be reverted",
        180,
    )
    wait_until(lambda: plant.versions() == dict.fromkeys(devices, "1"), "both back on 1", 60)
    assert plant.state(rollout) == "rolled_back"
    for device in devices:
        agent = plant.agents[device]
        assert "Received bundle linear@1" in agent.output()
        assert (plant.tmp / device / "models" / "linear" / "1").exists()
