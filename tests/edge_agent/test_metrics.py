"""The Prometheus endpoint, scraped from a real agent subprocess."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from edge_agent.config import MetricsConfig
from edge_agent.contracts.topics import fleet_filter
from edge_agent.metrics import metric_name
from tests.support.agent_config import write_agent_config
from tests.support.models import linear_bundle
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.mqtt import Probe
from tests.support.processes import AgentProcess, run
from tests.support.prometheus import parse, scrape

GOOD = {"temperature": 1.0, "vibration": 2.0, "pressure": 3.0}


def test_metric_names() -> None:
    assert metric_name("rejects.not_json", counter=True) == "edge_agent_rejects_not_json_total"
    assert metric_name("outbox.rows", counter=False) == "edge_agent_outbox_rows"
    assert metric_name("inference.p99_ms", counter=False) == "edge_agent_inference_p99_ms"


def test_metrics_listen_is_validated() -> None:
    assert MetricsConfig(listen="127.0.0.1:9108").port == 9108
    assert MetricsConfig(listen="[::1]:9108").host == "::1"
    for bad in ("9108", "localhost:", "127.0.0.1:99999", ":9108"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            MetricsConfig(listen=bad)


def test_scraping_a_running_agent(
    tmp_path: Path, broker: Mosquitto, probe: Probe, topic_prefix: str
) -> None:
    port = free_port()
    probe.subscribe(fleet_filter(topic_prefix, "results"))
    config = write_agent_config(
        tmp_path / "agent.toml",
        port=broker.port,
        prefix=topic_prefix,
        bundle=linear_bundle(tmp_path / "linear.bundle"),
        state_dir=tmp_path / "state",
        input_topic=f"{topic_prefix}-in/line-2/+/reading",
        extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_for_log("Prometheus metrics on http://127.0.0.1:")
        agent.wait_for_log("serving 1 source")
        for i in range(3):
            probe.publish(f"{topic_prefix}-in/line-2/press-{i}/reading", json.dumps(GOOD))
        probe.publish(f"{topic_prefix}-in/line-2/press-9/reading", b"{not json")
        probe.wait_for(lambda msgs: len(msgs) >= 3)

        deadline = time.monotonic() + 15
        while True:
            status, content_type, body = scrape(port)
            samples = parse(body)
            windows = samples.get("edge_agent_inference_windows_total", [("", 0.0)])[0][1]
            delivered = samples.get("edge_agent_outbox_delivered_total", [("", 0.0)])[0][1]
            if (windows == 3 and delivered >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        assert windows == 3 and delivered >= 3
        labels = '{device="press-01",site="plant-a"}'
        assert samples["edge_agent_rejects_not_json_total"] == [(labels, 1.0)]
        assert samples["edge_agent_uplink_connected"] == [(labels, 1.0)]
        assert samples["edge_agent_outbox_rows"][0][0] == labels
        assert samples["edge_agent_uptime_s"][0][1] > 0
        ((info, one),) = samples["edge_agent_info"]
        assert one == 1 and 'model="linear"' in info and 'model_version="1"' in info
        ((source, _),) = samples["edge_agent_source_state"]
        assert 'source="sensors"' in source
        # The same figures as the status the agent writes, under the documented names.
        counters = json.loads(
            run("edge-agent", "status", "--json", "--config", str(config), check=True).stdout
        )["counters"]
        for name in counters:
            assert metric_name(name, counter=True) in samples, name

        assert scrape(port, "/nothing")[0] == 404
        assert agent.stop() == 0


def test_a_taken_metrics_port_is_a_config_error(
    tmp_path: Path, broker: Mosquitto, topic_prefix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_agent_config(
            tmp_path / "agent.toml",
            port=broker.port,
            prefix=topic_prefix,
            bundle=linear_bundle(tmp_path / "linear.bundle"),
            state_dir=tmp_path / "state",
            input_topic=f"{topic_prefix}-in/line-2/+/reading",
            extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
        )
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            assert agent.process is not None
            assert agent.process.wait(60) == 78
        assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in agent.output()
