"""The registry contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.registry import (
    DriftRecord,
    ModelRecord,
    Registry,
    RegistryError,
    RolloutDevice,
    RolloutRecord,
    open_registry,
)
from tests.fleet.conftest import POSTGRES_URL, drop_schema


def _status(registry: Registry, device: str, site: str = "plant-a", **labels: str) -> None:
    registry.record_status(
        device,
        site,
        state="online",
        ts=100.0,
        agent_version="0.1.0",
        model="press",
        model_version="1",
        labels=labels,
    )


def _model(version: str = "2", sha: str = "a" * 64) -> ModelRecord:
    return ModelRecord(
        name="press",
        version=version,
        sha256=sha,
        size=10,
        path=f"/store/press-{version}.bundle",
        manifest={"name": "press", "version": version},
        baseline={"features": {}},
        signed=True,
        published=float(version),
    )


def test_devices_from_status_and_heartbeat_filter_by_site_line_tag(registry: Registry) -> None:
    _status(registry, "press-01", line="line-2", tags="presses, north")
    _status(registry, "press-02", line="line-1", tags="presses")
    _status(registry, "oven-01", site="plant-b", line="line-2")
    registry.record_heartbeat(
        "press-01", "plant-a", ts=200.0, model="press", model_version="2", health={"errors": 1.0}
    )

    device = registry.device("press-01")
    assert device is not None
    assert device.tags == ["presses", "north"] and device.line == "line-2"
    assert device.model_version == "2" and device.last_seen == 200.0
    assert device.health == {"errors": 1.0}
    assert registry.device("nope") is None

    assert [d.id for d in registry.devices()] == ["press-01", "press-02", "oven-01"]
    assert [d.id for d in registry.devices(site="plant-a")] == ["press-01", "press-02"]
    assert [d.id for d in registry.devices(line="line-2")] == ["press-01", "oven-01"]
    assert [d.id for d in registry.devices(tag="presses")] == ["press-01", "press-02"]
    assert [d.id for d in registry.devices(site="plant-a", tag="north")] == ["press-01"]

    registry.record_status(
        "press-01", "plant-a", state="offline", ts=300.0, agent_version="0.1.0",
        model="press", model_version="2", labels={"line": "line-2"},
    )  # fmt: skip
    device = registry.device("press-01")
    assert device is not None and device.state == "offline" and device.tags == []

    registry.set_desired("press-01", "press", "3")
    device = registry.device("press-01")
    assert device is not None and (device.desired_model, device.desired_version) == ("press", "3")


def test_heartbeat_from_an_unknown_device_registers_it(registry: Registry) -> None:
    registry.record_heartbeat("new-1", "plant-c", ts=5.0, model=None, model_version=None, health={})
    device = registry.device("new-1")
    assert device is not None and device.site == "plant-c" and device.state == "online"


def test_models_publish_once_per_version(registry: Registry) -> None:
    registry.add_model(_model("1"))
    registry.add_model(_model("2"))
    registry.add_model(_model("2"))  # the same bundle again is fine
    with pytest.raises(RegistryError, match=r"press@2 is already published"):
        registry.add_model(_model("2", sha="b" * 64))
    assert [m.version for m in registry.models()] == ["1", "2"]
    found = registry.model("press", "2")
    assert found is not None and found.signed and found.manifest["version"] == "2"
    assert registry.model("press", "9") is None
    assert registry.models("other") == []


def test_rollout_progress_changes_by_compare_and_set(registry: Registry) -> None:
    rollout = RolloutRecord(
        id="r1", model="press", version="2", selector="line=line-2",
        stages=["canary", "wave 100%"], gates={"drift_margin": 0.05}, timeout_s=60.0,
        created=1.0,
    )  # fmt: skip
    registry.create_rollout(
        rollout,
        [
            RolloutDevice("r1", "press-01", "plant-a", 0),
            RolloutDevice("r1", "press-02", "plant-a", 1),
        ],
    )
    stored = registry.rollout("r1")
    assert stored is not None and stored.stages == ["canary", "wave 100%"]
    assert stored.gates == {"drift_margin": 0.05} and stored.state == "running"

    assert registry.update_rollout("r1", expect={"stage": 0}, stage=1)
    assert not registry.update_rollout("r1", expect={"stage": 0}, stage=1)  # someone else won
    stored = registry.rollout("r1")
    assert stored is not None and stored.stage == 1

    assert registry.update_rollout_device(
        "r1", "press-01", expect={"state": "pending"}, state="sent", sent_at=5.0
    )
    assert not registry.update_rollout_device(
        "r1", "press-01", expect={"state": "pending"}, state="sent"
    )
    devices = registry.rollout_devices("r1")
    assert [(d.device, d.stage, d.state) for d in devices] == [
        ("press-01", 0, "sent"),
        ("press-02", 1, "pending"),
    ]
    assert [d.rollout_id for d in registry.rollout_devices(device="press-02")] == ["r1"]
    assert [r.id for r in registry.rollouts(["running"])] == ["r1"]
    assert registry.rollouts(["completed"]) == []
    with pytest.raises(RegistryError, match="no column"):
        registry.update_rollout("r1", colour="red")


def test_drift_is_stored_once_per_device_and_seq(registry: Registry) -> None:
    def record(device: str, seq: int, end: float, version: str = "1") -> DriftRecord:
        return DriftRecord(
            device=device, seq=seq, site="plant-a", model="press", model_version=version,
            window_start=end - 60, window_end=end,
            features={"temperature": {"bins": [1, 2, 3], "count": 6}}, received=end,
        )  # fmt: skip

    assert registry.add_drift([record("d1", 1, 100.0), record("d1", 2, 200.0)]) == 2
    assert registry.add_drift([record("d1", 2, 200.0), record("d2", 2, 300.0, "2")]) == 1
    assert [(r.device, r.seq) for r in registry.drift()] == [("d1", 1), ("d1", 2), ("d2", 2)]
    assert [r.seq for r in registry.drift(since=150.0, version="1")] == [2]
    assert [r.device for r in registry.drift(devices=["d2"])] == ["d2"]
    assert registry.drift(site="plant-z") == []
    assert registry.drift_count() == 3
    features = registry.drift()[0].features
    assert isinstance(features, dict)
    assert features["temperature"]["bins"] == [1, 2, 3]


def test_a_failed_transaction_leaves_nothing(registry: Registry) -> None:
    rollout = RolloutRecord(
        id="r2", model="press", version="2", selector="all", stages=["all"], gates={},
        timeout_s=1.0,
    )  # fmt: skip
    duplicate = RolloutDevice("r2", "d1", "plant-a", 0)
    registry.create_rollout(rollout, [duplicate])

    def halt_then_fail() -> None:
        with registry.transaction():
            registry.update_rollout("r2", state="halted")
            raise RegistryError("r3 boom")

    with pytest.raises(RegistryError, match="r3 boom"):
        halt_then_fail()
    stored = registry.rollout("r2")
    assert stored is not None and stored.state == "running"


def test_open_registry_picks_the_backend_by_url(tmp_path: Path) -> None:
    with open_registry(f"sqlite:///{tmp_path / 'a.db'}") as registry:
        _status(registry, "d1")
    with open_registry(str(tmp_path / "a.db")) as registry:
        assert [d.id for d in registry.devices()] == ["d1"]
    with pytest.raises(RegistryError, match="cannot connect"):
        open_registry("postgresql://nobody@127.0.0.1:1/none")


def _open_together(location: str, schema: str | None, errors: list[str]) -> list[str]:
    """Eight workers open the registry at once and each records a device; the devices stored."""
    start = threading.Barrier(8)

    def open_and_record(worker: int) -> None:
        start.wait()
        try:
            with open_registry(location, schema=schema) as registry:
                _status(registry, f"d{worker}")
        except RegistryError as err:
            errors.append(str(err))

    workers = [threading.Thread(target=open_and_record, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with open_registry(location, schema=schema) as registry:
        return sorted(d.id for d in registry.devices())


# Several `fleet serve` workers started at once on a registry that does not exist yet: each
# creates the schema. None may be turned away ("database is locked", or a duplicate key in
# PostgreSQL's catalog).
EVERY_WORKER = [f"d{n}" for n in range(8)]


def test_workers_opening_a_new_sqlite_registry_together_all_succeed(tmp_path: Path) -> None:
    for trial in range(10):
        errors: list[str] = []
        location = str(tmp_path / f"trial-{trial}" / "fleet.db")
        assert _open_together(location, None, errors) == EVERY_WORKER and errors == [], errors


def test_workers_opening_a_new_postgres_registry_together_all_succeed(
    postgres_schema: str,
) -> None:
    for trial in range(5):
        errors: list[str] = []
        schema = f"{postgres_schema}_new{trial}"  # one that does not exist yet
        try:
            stored = _open_together(POSTGRES_URL, schema, errors)
        finally:
            drop_schema(schema)
        assert stored == EVERY_WORKER and errors == [], errors
