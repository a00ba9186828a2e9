"""The README's first command: the demo runs the whole story and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mosquitto import require_mosquitto
from tests.support.processes import run


@pytest.mark.slow
def test_demo_shows_live_predictions_and_stops_cleanly(tmp_path: Path) -> None:
    require_mosquitto()
    result = run("fleet", "demo", "--duration", "50", "--workdir", str(tmp_path), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "pump-1" in out and "pump-2" in out
    assert "on OPC-UA at opc.tcp://127.0.0.1:" in out  # the pumps are served as a PLC would
    assert "healthy" in out
    assert "health:" in out and "windows" in out  # the agent's heartbeat, every 5 s
    assert "/metrics" in out
    table = [line for line in out.splitlines() if line.startswith("plant-demo")]
    assert table and "pump-gateway-1" in table[0] and "online" in table[0]  # the fleet's view
    # The rollout of version 2 through the fleet manager: every step acked, then kept.
    for step in ("verified", "golden", "active", "kept"):
        assert f"rollout: pump-health@2 {step} ok" in out, step
    assert "healthy  pump-health@2" in out  # results from the new version
    assert "drift (pump-health@" in out and "vibration_rms PSI" in out
    assert "stopped cleanly" in out
    assert "Traceback" not in (tmp_path / "agent.log").read_text()
