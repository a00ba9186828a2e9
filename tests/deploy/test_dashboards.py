"""The shipped dashboards: valid JSON, the topics the contracts build, the fields the payloads
carry, and metric names a real agent exposes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from edge_agent.contracts.payloads import (
    AlertPayload,
    DeviceAlertPayload,
    DriftSummaryPayload,
    HeartbeatPayload,
    ResultPayload,
    StatusPayload,
)
from edge_agent.contracts.topics import DEFAULT_PREFIX, fleet_filter
from edge_agent.metrics import metric_name
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.mqtt import Probe
from tests.support.processes import REPO, AgentProcess
from tests.support.prometheus import parse, scrape

DASHBOARDS = REPO / "deploy" / "dashboards"
# What each topic carries (the alerts topic carries drift alerts and device alerts).
PAYLOADS_BY_KIND: dict[str, tuple[type[BaseModel], ...]] = {
    "results": (ResultPayload,),
    "heartbeat": (HeartbeatPayload,),
    "status": (StatusPayload,),
    "drift": (DriftSummaryPayload,),
    "alerts": (AlertPayload, DeviceAlertPayload),
}


def _flow() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = json.loads((DASHBOARDS / "node-red-flow.json").read_text())
    return nodes


def _health_names() -> set[str]:
    """Every counter and gauge name the agent's code can report."""
    names = set()
    for path in (REPO / "edge_agent").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"""\.(?:count|gauge)\(\s*["']([a-z0-9_.]+)["']""", text))
        names |= {f"rejects.{r}" for r in re.findall(r"""InputRejected\(\s*["']([a-z_]+)""", text)}
    return names | {"inference.p50_ms", "inference.p99_ms", "uptime_s"}


def test_node_red_flow_subscribes_to_the_topics_the_contracts_build() -> None:
    nodes = _flow()
    ids = {node["id"] for node in nodes}
    for node in nodes:
        for outputs in node.get("wires", []):
            assert set(outputs) <= ids, f"{node['id']} wires to a missing node"
    subscriptions = {node["name"]: node["topic"] for node in nodes if node["type"] == "mqtt in"}
    assert subscriptions == {
        kind: fleet_filter(DEFAULT_PREFIX, kind)  # type: ignore[arg-type]
        for kind in PAYLOADS_BY_KIND
    }
    charts = {node["name"] for node in nodes if node["type"] == "ui_chart"}
    assert any("outputs" in c for c in charts) and any("Drift" in c for c in charts)
    assert any("p99" in c for c in charts)


def test_node_red_functions_read_fields_the_payloads_have() -> None:
    nodes = {node["id"]: node for node in _flow()}
    for node in nodes.values():
        if node["type"] != "mqtt in":
            continue
        models = PAYLOADS_BY_KIND[node["name"]]
        known = {field for model in models for field in model.model_fields}
        for target in node["wires"][0]:
            code = nodes[target]["func"]
            fields = set(re.findall(r"\bp\.([a-z_]+)", code))
            assert fields, f"{target} reads no payload field"
            assert fields <= known, (target, fields - known)
            for name in re.findall(r"""(?:gauges|counters)\["([a-z0-9_.]+)"\]""", code):
                assert name in _health_names(), name


def test_grafana_dashboard_uses_metrics_the_agent_exposes(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    dashboard = json.loads((DASHBOARDS / "grafana-agents.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {
        name for expr in exprs for name in re.findall(r"\bedge_agent_[a-z0-9_]+(?![\w.])", expr)
    }
    patterns = {pattern for expr in exprs for pattern in re.findall(r'__name__=~"([^"]+)"', expr)}
    assert used and patterns

    port = free_port()
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/line-2/+/reading",
        extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    reading = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("serving 1 source")
        probe.publish(f"{topic_prefix}-in/line-2/press-1/reading", json.dumps(reading))
        deadline = time.monotonic() + 15
        while True:
            exposed = set(parse(scrape(port)[2]))
            if "edge_agent_outbox_delivered_total" in exposed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        agent.stop()
    # Counters appear once they first count (errors, say): those must at least be names the
    # agent's code counts.
    possible = exposed | {metric_name(n, counter=True) for n in _health_names()}
    assert used <= possible, used - possible
    for pattern in patterns:
        assert any(re.fullmatch(pattern, name) for name in possible), pattern
    assert {"edge_agent_inference_windows_total", "edge_agent_outbox_rows"} <= exposed


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_every_dashboard_file_is_json(path: Path) -> None:
    assert json.loads(path.read_text())
