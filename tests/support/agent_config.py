"""Writing agent configs for tests."""

from __future__ import annotations

from pathlib import Path


def write_agent_config(
    path: Path,
    *,
    port: int,
    prefix: str,
    bundle: Path,
    state_dir: Path,
    input_topic: str,
    device: str = "press-01",
    site: str = "plant-a",
    asset_level: int = 2,
    heartbeat_s: float = 1.0,
    client_id: str | None = None,
    broker: str = "",
    extra: str = "",
) -> Path:
    """``client_id`` fixes the base of the agent's MQTT client ids (each connection appends its
    role), so a restarted agent finds its persistent sessions under the same ids. ``broker``
    lines go into the ``[broker]`` table (credentials), ``extra`` at the end of the file."""
    broker_id = f'client_id = "{client_id}"\n' if client_id is not None else ""
    path.write_text(
        f"""
topic_prefix = "{prefix}"

[device]
id = "{device}"
site = "{site}"
labels = {{ line = "line-2" }}
state_dir = "{state_dir}"

[broker]
host = "127.0.0.1"
port = {port}
{broker_id}keepalive_s = 5
reconnect_max_s = 2
{broker}

[model]
bundle = "{bundle}"

[[sources]]
type = "mqtt"
name = "sensors"
topics = ["{input_topic}"]
qos = 1
asset_level = {asset_level}
max_payload_bytes = 4096

[heartbeat]
interval_s = {heartbeat_s}
{extra}
"""
    )
    return path
