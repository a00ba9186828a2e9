"""Bundles cut into hashed chunks, and what a device says it already holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleet.transfer import BundleChunks, assemble, parse_have_chunks


def test_chunks_carry_their_own_hash_and_reassemble(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"tail"
    path = tmp_path / "m.bundle"
    path.write_bytes(data)
    bundle = BundleChunks.from_file(path, "m", "2", chunk_size=1000)
    assert bundle.total == 11
    offer = bundle.offer("r:offer:d", 1.0)
    assert offer.sha256 == hashlib.sha256(data).hexdigest() and offer.size == len(data)
    chunks = [bundle.chunk(i) for i in reversed(range(bundle.total))]
    assert all(c.total == 11 for c in chunks)
    assert assemble(chunks) == data
    damaged = chunks[0].model_copy(update={"data": chunks[1].data})
    with pytest.raises(ValueError, match="chunk 10"):
        assemble([damaged])
    with pytest.raises(IndexError):
        bundle.chunk(11)
    assert bundle.missing({0, 2, 10}) == [1, 3, 4, 5, 6, 7, 8, 9]


def test_have_chunks_in_any_readable_form_and_nothing_otherwise() -> None:
    assert parse_have_chunks([0, 3, -1, True]) == {0, 3}
    assert parse_have_chunks("0, 1,5,x") == {0, 1, 5}
    assert parse_have_chunks("") == set()
    assert parse_have_chunks(4) == {4}
    assert parse_have_chunks(None) == set()
    assert parse_have_chunks(2.5) == set()


def test_an_empty_bundle_or_chunk_size_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        BundleChunks("m", "1", b"")
    with pytest.raises(ValueError, match="chunk_size"):
        BundleChunks("m", "1", b"x", chunk_size=0)
