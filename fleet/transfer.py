"""Moving a bundle to a device over MQTT: the offer, and chunks each carrying its own hash.

A device that lost its connection mid-transfer reports the chunk indexes it already holds
(``have_chunks`` in its ``need_bundle`` or ``offer`` ack), and only the missing ones are sent again.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contracts.payloads import OfferCommand, TransferChunkPayload

__all__ = ["DEFAULT_CHUNK_SIZE", "BundleChunks", "parse_have_chunks"]

# Small enough for any broker's message size limit and a Raspberry Pi's memory, large enough
# that a typical bundle (tens of kB to a few MB) is a handful of messages.
DEFAULT_CHUNK_SIZE = 64 * 1024


def parse_have_chunks(value: object) -> set[int]:
    """The chunk indexes a device says it holds: ``[0, 1, 5]``, ``"0,1,5"``, one number, or none.

    Anything unreadable counts as "holds nothing", so the worst case is sending chunks again.
    """
    if isinstance(value, bool):
        return set()
    if isinstance(value, list):
        return {i for i in value if isinstance(i, int) and not isinstance(i, bool) and i >= 0}
    if isinstance(value, int):
        return {value} if value >= 0 else set()
    if not isinstance(value, str):
        return set()
    held = set()
    for part in value.replace(" ", "").split(","):
        if part.isdigit():
            held.add(int(part))
    return held


@dataclass(frozen=True)
class BundleChunks:
    """A bundle file cut into chunks. Reads the file once, at construction."""

    model: str
    version: str
    data: bytes
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if not self.data:
            raise ValueError(f"bundle {self.model}@{self.version} is empty")

    @classmethod
    def from_file(
        cls, path: Path, model: str, version: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> BundleChunks:
        return cls(model, version, path.read_bytes(), chunk_size)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def total(self) -> int:
        return math.ceil(len(self.data) / self.chunk_size)

    def offer(self, cmd_id: str, ts: float, url: str | None = None) -> OfferCommand:
        return OfferCommand(
            cmd_id=cmd_id,
            ts=ts,
            model=self.model,
            version=self.version,
            sha256=self.sha256,
            size=len(self.data),
            chunk_size=self.chunk_size,
            url=url,
        )

    def chunk(self, index: int) -> TransferChunkPayload:
        if not 0 <= index < self.total:
            raise IndexError(f"chunk {index} is outside 0..{self.total - 1}")
        piece = self.data[index * self.chunk_size : (index + 1) * self.chunk_size]
        return TransferChunkPayload(
            model=self.model,
            version=self.version,
            index=index,
            total=self.total,
            sha256=hashlib.sha256(piece).hexdigest(),
            data=base64.b64encode(piece).decode("ascii"),
        )

    def missing(self, held: set[int]) -> list[int]:
        """Indexes still to send to a device that holds ``held``."""
        return [index for index in range(self.total) if index not in held]


def assemble(chunks: list[TransferChunkPayload]) -> bytes:
    """Join received chunks in index order, checking each one's hash (the receiving side's job;
    here for tests and tools)."""
    ordered = sorted(chunks, key=lambda chunk: chunk.index)
    out = bytearray()
    for chunk in ordered:
        piece = base64.b64decode(chunk.data)
        if hashlib.sha256(piece).hexdigest() != chunk.sha256:
            raise ValueError(f"chunk {chunk.index} does not match its sha256")
        out += piece
    return bytes(out)
