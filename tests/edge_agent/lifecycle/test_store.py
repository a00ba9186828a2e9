"""The model store: versions on disk, the atomic pointer, kept history, resumable transfers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.contracts.bundle import sha256_hex
from edge_agent.contracts.payloads import OfferCommand
from edge_agent.errors import ModelError
from edge_agent.lifecycle.store import ModelStore
from tests.support.lifecycle import complete_bundle


def _store(tmp_path: Path, keep: int = 1) -> ModelStore:
    store = ModelStore(tmp_path / "models", keep_previous=keep)
    store.open()
    return store


def _bundles(tmp_path: Path, *versions: str) -> dict[str, bytes]:
    return {
        v: complete_bundle(tmp_path / f"linear-{v}.bundle", version=v).read_bytes()
        for v in versions
    }


def test_pointer_history_and_pruning(tmp_path: Path) -> None:
    store = _store(tmp_path, keep=1)
    bundles = _bundles(tmp_path, "1", "2", "3")
    assert store.active() is None
    for version, data in bundles.items():
        assert store.add(data) == ("linear", version)
        assert store.sha256("linear", version) == sha256_hex(data)
    store.set_active("linear", "1")
    assert store.versions("linear") == ["1", "2", "3"]  # received, not served yet: kept
    store.set_active("linear", "2")
    pointer = store.set_active("linear", "3")
    assert (pointer.version, pointer.history, pointer.previous) == ("3", ["2"], "2")
    # Version 1 fell out of the kept history: its folder is gone.
    assert store.versions("linear") == ["2", "3"]
    assert not store.has("linear", "1")
    assert store.has("linear", "2", sha256_hex(bundles["2"]))
    assert not store.has("linear", "2", "0" * 64)
    back = store.restore("linear", "2")
    assert (back.version, back.history) == ("2", [])
    assert store.active() == back
    assert not list((tmp_path / "models").glob("*.tmp"))


def test_an_unreadable_pointer_is_ignored(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "models" / "active.json").write_text("{half")
    assert store.active() is None


def test_refusals_are_remembered_until_cleared(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.mark_refused("a" * 64, "golden: off by 0.5")
    assert _store(tmp_path).refused("a" * 64) == "golden: off by 0.5"
    store.clear_refused("a" * 64)
    assert store.refused("a" * 64) is None


def _offer(data: bytes, chunk_size: int, version: str = "2") -> OfferCommand:
    return OfferCommand(
        cmd_id="o",
        ts=time.time(),
        model="linear",
        version=version,
        sha256=sha256_hex(data),
        size=len(data),
        chunk_size=chunk_size,
    )


def test_transfer_resumes_and_checks_the_whole_bundle(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = _bundles(tmp_path, "2")["2"]
    size = 700
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    transfer = store.begin_transfer(_offer(data, size))
    assert (transfer.have, transfer.total) == ([], len(chunks))
    store.add_chunk("linear", "2", 0, chunks[0])
    store.add_chunk("linear", "2", 2, chunks[2])
    # The same offer again (after a restart) keeps what arrived.
    assert store.begin_transfer(_offer(data, size)).have == [0, 2]
    with pytest.raises(ModelError, match="not complete"):
        store.finish_transfer("linear", "2")
    with pytest.raises(ModelError, match="outside"):
        store.add_chunk("linear", "2", len(chunks), b"x")
    for index, chunk in enumerate(chunks):
        transfer = store.add_chunk("linear", "2", index, chunk)
    assert transfer.complete
    assert store.finish_transfer("linear", "2") == sha256_hex(data)
    assert store.has("linear", "2", sha256_hex(data))
    assert store.transfer("linear", "2") is None


def test_a_transfer_whose_bundle_hash_differs_is_discarded(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = _bundles(tmp_path, "2")["2"]
    store.begin_transfer(_offer(data, len(data)))
    store.add_chunk("linear", "2", 0, data[:-1] + b"!")
    with pytest.raises(ModelError, match="sha256"):
        store.finish_transfer("linear", "2")
    assert store.transfer("linear", "2") is None
    assert not store.has("linear", "2")


def test_a_bundle_under_another_name_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = _bundles(tmp_path, "3")["3"]
    store.begin_transfer(_offer(data, len(data), version="2"))
    store.add_chunk("linear", "2", 0, data)
    with pytest.raises(ModelError, match="the bundle is linear@3"):
        store.finish_transfer("linear", "2")
    assert store.versions("linear") == []


def test_a_chunk_without_an_offer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no offer"):
        _store(tmp_path).add_chunk("linear", "7", 0, b"data")
    with pytest.raises(ModelError, match="manifest"):
        _store(tmp_path).add(b"not a zip")
