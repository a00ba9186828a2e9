"""Drift summaries and alerts from a real agent, through its outbox, on a real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contracts.payloads import AlertPayload, DriftSummaryPayload, decode
from tests.edge_agent.lifecycle.conftest import Device, Keys, start_device
from tests.edge_agent.lifecycle.test_grace import feed_until
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Probe


@pytest.fixture
def drifting_device(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str, keys: Keys
) -> Iterator[Device]:
    yield from start_device(
        tmp_path,
        broker,
        probe,
        topic_prefix,
        keys,
        extra="[drift]\nwindow_s = 2.0\nmin_count = 100\n",
    )


def _summaries(device: Device) -> list[DriftSummaryPayload]:
    return [
        decode(DriftSummaryPayload, m.payload) for m in device.probe.on_topic(device.topics.drift)
    ]


def _alerts(device: Device) -> list[AlertPayload]:
    return [decode(AlertPayload, m.payload) for m in device.probe.on_topic(device.topics.alerts)]


def test_summaries_and_alerts_are_published(drifting_device: Device) -> None:
    device = drifting_device
    feed_until(
        device, lambda: sum(s.features["vibration"].count for s in _summaries(device)) >= 100
    )
    summary = next(s for s in _summaries(device) if s.features["vibration"].count > 0)
    assert (summary.model, summary.model_version) == ("linear", "1")
    assert summary.window_end > summary.window_start
    assert set(summary.features) == {"temperature", "vibration", "pressure"}
    assert set(summary.outputs) == {"score"}
    assert len(summary.features["vibration"].bins) == 12  # deciles, underflow and overflow
    assert set(summary.scores["vibration"]) == {"psi", "js", "ks", "mean_shift"}
    assert all(s.features["pressure"].missing == 0 for s in _summaries(device))

    # A reading without pressure is refused, and its window's summary counts pressure missing.
    lacking = {"temperature": 70.0, "vibration": 0.3, "ts": 1_700_000_000.0 + device.sent}
    device.probe.publish(f"{device.prefix}-in/line-2/press-1/reading", json.dumps(lacking))
    feed_until(device, lambda: any(s.features["pressure"].missing for s in _summaries(device)))
    assert sum(s.features["pressure"].missing for s in _summaries(device)) == 1

    # The bearing wears: vibration five standard deviations up.
    shift = time.time()
    rng = np.random.default_rng(5)
    deadline = time.monotonic() + 60
    while not any(a.name == "vibration" and a.level == "alert" for a in _alerts(device)):
        assert time.monotonic() < deadline, "no vibration alert"
        for row in rng.normal([70.0, 0.8, 5.0], [5.0, 0.1, 1.0], size=(10, 3)):
            device.send(row)
        time.sleep(0.05)
    alert = next(a for a in _alerts(device) if a.name == "vibration" and a.level == "alert")
    assert alert.window_end > shift  # no alert while the readings were stationary
    assert alert.scores["psi"] > 1 and alert.scores["mean_shift"] > 1  # may straddle the shift
    drifted = next(s for s in _summaries(device) if s.levels.get("vibration") == "alert")
    assert drifted.window_end == alert.window_end
