"""scripts/fetch-mosquitto: the Debian package, unpacked without root, serves as the broker.

It downloads from the machine's apt archive, so it runs only when EDGE_TEST_NETWORK=1: the
test suite (and CI) must not fail because a mirror is slow or unreachable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.broker import MosquittoProcess
from tests.support.mqtt import Probe
from tests.support.processes import REPO

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        os.environ.get("EDGE_TEST_NETWORK") != "1",
        reason="downloads from the apt archive; set EDGE_TEST_NETWORK=1 to run it",
    ),
]


def test_fetched_mosquitto_serves_as_the_broker(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("scripts/fetch-mosquitto needs apt-get (Debian, Ubuntu, Raspberry Pi OS)")
    target = tmp_path / "mosquitto"
    fetched = subprocess.run(
        [str(REPO / "scripts" / "fetch-mosquitto"), str(target)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert fetched.returncode == 0, fetched.stderr
    wrapper = target / "bin" / "mosquitto"
    assert os.access(wrapper, os.X_OK)

    broker = MosquittoProcess(tmp_path / "broker", binary=str(wrapper))
    broker.start()
    try:
        assert broker.process is not None
        # The wrapper execs the unpacked binary: the broker serving is the fetched one.
        running = Path(f"/proc/{broker.process.pid}/exe").resolve()
        assert running == (target / "root" / "usr" / "sbin" / "mosquitto").resolve()
        probe = Probe(broker.port)
        try:
            probe.subscribe("fetched/#")
            probe.publish("fetched/a", b"1")
            probe.wait_for(lambda messages: len(messages) == 1)
        finally:
            probe.close()
    finally:
        broker.stop()
