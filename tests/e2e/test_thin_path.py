"""The three programs as subprocesses against one real broker: convert, serve, list devices."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import joblib
import numpy as np

from edge_agent.contracts.bundle import read_bundle, sha256_hex
from edge_agent.contracts.payloads import ResultPayload, StatusPayload, decode
from edge_agent.contracts.topics import DeviceTopics
from tests.support.agent_config import write_agent_config
from tests.support.models import FEATURES, train_pipeline
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run


def _fleet_devices(port: int, prefix: str) -> list[dict[str, object]]:
    result = run(
        "fleet",
        "--broker",
        f"127.0.0.1:{port}",
        "--prefix",
        prefix,
        "devices",
        "list",
        "--live",
        "--json",
        check=True,
    )
    devices: list[dict[str, object]] = json.loads(result.stdout)
    return devices


def test_convert_serve_and_list(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    model_path, reference = train_pipeline(tmp_path)
    bundle_path = tmp_path / "press-health-1.bundle"
    converted = run(
        "edge-convert",
        "convert",
        str(model_path),
        "--reference",
        str(reference),
        "-o",
        str(bundle_path),
        "--name",
        "press-health",
        "--version",
        "1",
    )
    assert converted.returncode == 0, converted.stderr
    bundle = read_bundle(bundle_path)
    assert bundle.manifest.feature_names == FEATURES
    assert bundle.manifest.files["model.onnx"] == sha256_hex(bundle.files["model.onnx"])

    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    probe.subscribe(f"{topic_prefix}/#")
    state_dir = tmp_path / "state"
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=bundle_path,
        state_dir=state_dir,
        input_topic=f"{topic_prefix}-in/line-2/+/reading",
    )
    pipeline = joblib.load(model_path)
    rng = np.random.default_rng(7)
    rows = rng.normal([70.0, 0.3, 5.0], [5.0, 0.1, 1.0], size=(40, 3))

    with AgentProcess(config, tmp_path / "agent.log") as agent:
        probe.wait_for(
            lambda msgs: any(
                m.topic == topics.status and decode(StatusPayload, m.payload).state == "online"
                for m in msgs
            )
        )
        for i, row in enumerate(rows):
            reading = dict(zip(FEATURES, row.tolist(), strict=True)) | {"ts": 1_700_000_000 + i}
            probe.publish(f"{topic_prefix}-in/line-2/press-{i % 2}/reading", json.dumps(reading))

        def results(msgs: list) -> list:  # type: ignore[type-arg]
            return [m for m in msgs if "/results/" in m.topic]

        received = results(probe.wait_for(lambda msgs: len(results(msgs)) >= len(rows)))
        assert all(m.qos == 1 for m in received)
        payloads = [decode(ResultPayload, m.payload) for m in received]
        by_ts = {p.window_end: (p, m.topic) for p, m in zip(payloads, received, strict=True)}
        assert len(by_ts) == len(rows), sorted((p.window_end, p.seq, t) for p, t in by_ts.values())
        expected_proba = pipeline.predict_proba(rows)
        expected_label = pipeline.predict(rows)
        for i in range(len(rows)):
            payload, topic = by_ts[1_700_000_000 + i]
            assert topic == topics.results(f"press-{i % 2}")
            assert (payload.model, payload.model_version, payload.device) == (
                "press-health",
                "1",
                "press-01",
            )
            assert payload.outputs["label"] == int(expected_label[i])
            for k, label in enumerate(pipeline.classes_):
                assert abs(payload.outputs[f"probabilities_{label}"] - expected_proba[i, k]) < 1e-4
        seqs = [p.seq for p in payloads]
        assert len(set(seqs)) == len(seqs)
        assert len({p.record_id for p in payloads}) == len(payloads)

        # Delivered records leave the outbox only after the PUBACK: it empties.
        outbox = state_dir / "outbox.db"
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(outbox) as db:
                waiting = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/results/%'"
                ).fetchone()[0]
            if waiting == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert waiting == 0

        devices = _fleet_devices(broker.port, topic_prefix)
        assert [(d["device"], d["state"], d["model"], d["model_version"]) for d in devices] == [
            ("press-01", "online", "press-health", "1")
        ]
        table = run(
            "fleet",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--prefix",
            topic_prefix,
            "devices",
            "list",
            "--live",
            check=True,
        )
        assert (
            "press-01" in table.stdout
            and "online" in table.stdout
            and "press-health@1" in table.stdout
        )

        assert agent.stop() == 0
    assert [d["state"] for d in _fleet_devices(broker.port, topic_prefix)] == ["stopped"]
    assert "Traceback" not in agent.output()
    assert "model.public_key is not set" in agent.output()  # unsigned bundles: said at start


def test_last_will_says_offline(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    from tests.support.models import linear_bundle

    bundle = linear_bundle(tmp_path / "linear.bundle")
    topics = DeviceTopics(topic_prefix, "plant-a", "press-01")
    probe.subscribe(topics.status)
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=bundle,
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/+/+/reading",
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        probe.wait_for(
            lambda msgs: any(decode(StatusPayload, m.payload).state == "online" for m in msgs)
        )
        agent.kill()
        probe.wait_for(lambda msgs: decode(StatusPayload, msgs[-1].payload).state == "offline")
    finally:
        if agent.alive():
            agent.kill()
    assert [d["state"] for d in _fleet_devices(broker.port, topic_prefix)] == ["offline"]
