"""The `fleet` CLI on a registry: publishing checks bundles, drift reports rank, help teaches."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import cast

import pytest

from fleet.cli import main
from fleet.drift import drift_gate, scores
from fleet.registry import DriftRecord, ModelRecord, RolloutRecord, SqliteRegistry
from tests.fleet.support import keypair, signed_bundle
from tests.support.models import linear_bundle
from tests.support.processes import command, program_env, run


def _fleet(tmp: Path, *args: str) -> list[str]:
    return ["--registry", str(tmp / "fleet.db"), "--store", str(tmp / "store"), *args]


def test_models_publish_checks_the_signature_and_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keypair(tmp_path)
    bundle = signed_bundle(tmp_path / "linear-3.bundle", key, version="3")
    assert main(_fleet(tmp_path, "models", "publish", str(bundle), "--public-key", str(pub))) == 0
    assert "published linear@3" in capsys.readouterr().out
    assert (tmp_path / "store" / "linear-3.bundle").read_bytes() == bundle.read_bytes()

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _other_key, other_pub = keypair(other_dir)
    assert (
        main(_fleet(tmp_path, "models", "publish", str(bundle), "--public-key", str(other_pub)))
        == 1
    )
    assert "signature does not match" in capsys.readouterr().err

    unsigned = linear_bundle(tmp_path / "linear-4.bundle", version="4")
    assert main(_fleet(tmp_path, "models", "publish", str(unsigned), "--public-key", str(pub))) == 1
    assert "not signed" in capsys.readouterr().err
    assert main(_fleet(tmp_path, "models", "publish", str(unsigned))) == 2
    assert "--public-key" in capsys.readouterr().err
    assert main(_fleet(tmp_path, "models", "publish", str(unsigned), "--allow-unsigned")) == 0
    capsys.readouterr()

    assert main(_fleet(tmp_path, "models", "list", "--json")) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["version"], m["signed"]) for m in listed] == [("3", True), ("4", False)]
    assert main(_fleet(tmp_path, "models", "list")) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "MODEL",
        "VERSION",
        "SIZE",
        "SIGNED",
        "SHA256",
        "PUBLISHED",
    ]


def test_rollout_start_refuses_what_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fleet(tmp_path, "rollout", "start", "linear@9", "--to", "all")) == 1
    assert "not published" in capsys.readouterr().err
    unsigned = linear_bundle(tmp_path / "linear-4.bundle", version="4")
    assert main(_fleet(tmp_path, "models", "publish", str(unsigned), "--allow-unsigned")) == 0
    assert main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "all")) == 1
    assert "no known device matches" in capsys.readouterr().err
    with SqliteRegistry(tmp_path / "fleet.db") as registry:
        registry.record_status(
            "d1", "plant-a", state="online", ts=1.0, agent_version="x", model="linear",
            model_version="1", labels={},
        )  # fmt: skip
    assert main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "colour=red")) == 1
    assert "selector key 'colour' is unknown" in capsys.readouterr().err
    assert (
        main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "all", "--waves", "50,20"))
        == 1
    )
    assert "increasing" in capsys.readouterr().err
    assert (
        main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "all", "--waves", "50")) == 1
    )
    assert "end at 100" in capsys.readouterr().err
    assert main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "all")) == 0
    assert main(_fleet(tmp_path, "rollout", "start", "linear@4", "--to", "all")) == 1
    assert "unfinished rollout" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(_fleet(tmp_path, "rollout", "start", "linear", "--to", "all"))
    assert usage.value.code == 2
    assert main(_fleet(tmp_path, "rollout", "status", "nope")) == 1


def _baseline() -> dict[str, object]:
    dist = {"edges": [0.0, 1.0, 2.0], "fractions": [0.1, 0.3, 0.4, 0.2], "count": 100,
            "mean": 1.0, "std": 0.5, "min": -1.0, "max": 3.0}  # fmt: skip
    return {"schema_version": 1, "features": {"calm": dist, "shifted": dist}, "outputs": {}}


def _record(device: str, seq: int, version: str, shifted: list[int], end: float) -> DriftRecord:
    def summary(bins: list[int], mean: float) -> dict[str, object]:
        return {"bins": bins, "count": sum(bins), "missing": 0, "non_finite": 0,
                "out_of_range": 0, "min": 0.0, "max": 2.0, "mean": mean, "m2": 1.0}  # fmt: skip

    return DriftRecord(
        device=device, seq=seq, site="plant-a", model="press", model_version=version,
        window_start=end - 60, window_end=end,
        features={"calm": summary([1, 3, 4, 2], 1.0), "shifted": summary(shifted, 2.0)},
    )  # fmt: skip


def test_drift_report_merges_devices_and_ranks_worst_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    with SqliteRegistry(tmp_path / "fleet.db") as registry:
        registry.add_model(
            ModelRecord("press", "1", "a" * 64, 1, "/x", {}, baseline=_baseline(), published=1.0)
        )
        registry.add_drift([
            _record("d1", 1, "1", [0, 0, 1, 9], now - 7200),
            _record("d1", 2, "1", [0, 0, 2, 8], now - 60),
            _record("d2", 1, "1", [0, 1, 1, 8], now - 30),
        ])  # fmt: skip
    assert main(_fleet(tmp_path, "drift", "report", "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["shifted", "calm"]
    assert rows[0]["level"] == "alert" and rows[1]["level"] == "ok"
    assert rows[0]["devices"] == 2 and rows[0]["windows"] == 3 and rows[0]["count"] == 30
    assert rows[1]["psi"] == pytest.approx(0.0, abs=1e-9)
    assert main(_fleet(tmp_path, "drift", "report", "--since", "1h", "--json")) == 0
    assert json.loads(capsys.readouterr().out)[0]["windows"] == 2
    assert main(_fleet(tmp_path, "drift", "report", "--model", "other")) == 0
    assert "no drift summaries" in capsys.readouterr().out
    assert main(_fleet(tmp_path, "drift", "report")) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == [
        "press@1",
        "shifted",
        "feature",
        "alert",
    ]


def test_scores_and_the_drift_gate(tmp_path: Path) -> None:
    from edge_agent.contracts.payloads import FeatureSummary

    same = scores(
        FeatureSummary(bins=[1, 3, 4, 2], count=10, mean=1.0),
        cast(dict[str, dict[str, object]], _baseline()["features"])["calm"],
    )
    assert same["psi"] == pytest.approx(0.0, abs=1e-9) and same["ks"] == pytest.approx(
        0.0, abs=1e-9
    )
    assert same["mean_shift"] == 0.0
    moved = scores(
        FeatureSummary(bins=[0, 0, 1, 9], count=10, mean=2.0),
        cast(dict[str, dict[str, object]], _baseline()["features"])["calm"],
    )
    assert moved["psi"] > 0.25 and 0 < moved["js"] <= 0.7 and moved["ks"] > 0.3
    assert moved["mean_shift"] == pytest.approx(2.0)

    now = time.time()
    with SqliteRegistry(tmp_path / "fleet.db") as registry:
        for version in ("1", "2"):
            registry.add_model(
                ModelRecord("press", version, version * 64, 1, "/x", {}, baseline=_baseline())
            )
        rollout = RolloutRecord("r", "press", "2", "all", ["canary"], {}, 60.0, created=now - 600)
        registry.add_drift([_record("old", 1, "1", [1, 3, 4, 2], now)])
        assert drift_gate(registry, rollout, ["new"], 0.1) is None  # no data on the new side
        registry.add_drift([_record("new", 1, "2", [1, 3, 4, 2], now)])
        assert drift_gate(registry, rollout, ["new"], 0.1) is None  # as calm as before
        registry.add_drift([_record("new", 2, "2", [0, 0, 0, 30], now)])
        failure = drift_gate(registry, rollout, ["new"], 0.1)
        assert failure is not None and "mean PSI" in failure and "press@2" in failure


def test_help_teaches_every_command() -> None:
    result = run("fleet", "--help", check=True)
    for word in (
        "serve",
        "models",
        "devices",
        "rollout",
        "drift",
        "broker-acl",
        "a day with the fleet",
    ):
        assert word in result.stdout
    rollout = run("fleet", "rollout", "start", "--help", check=True).stdout
    for option in ("--to", "--canary", "--waves", "--drift-margin", "--soak", "--timeout"):
        assert option in rollout
    assert "rolls back" in rollout


def test_json_into_a_pipe_whose_reader_left_exits_141_without_a_traceback(tmp_path: Path) -> None:
    # Enough rollouts that the JSON (about 300 bytes each) outgrows the pipe's buffer and what
    # head reads before it exits: the writer is bound to meet the closed pipe.
    with SqliteRegistry(tmp_path / "fleet.db") as registry:
        for index in range(3000):
            registry.create_rollout(
                RolloutRecord(f"r{index:05d}", "press", "2", "all", ["canary"], {}, 60.0), []
            )
    listing = command("fleet", *_fleet(tmp_path, "rollout", "list", "--json"))
    piped = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "fleet", *listing],
        env=program_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (piped.returncode, piped.stdout, piped.stderr) == (141, "[\n", "")

    # The reader gone before the first write: 141 is the exit status, not death by SIGPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        alone = subprocess.run(
            listing, env=program_env(), stdout=write_end, stderr=subprocess.PIPE, check=False
        )
    finally:
        os.close(write_end)
    assert (alone.returncode, alone.stderr) == (141, b"")
