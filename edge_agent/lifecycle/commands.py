"""Reading the control topics: which command a message is, or why it is refused.

The device listens on its ``cmd`` topic (offer, activate, rollback), its retained ``desired``
topic and its ``transfer`` topic (bundle chunks). A message that cannot be decoded still gets an
ack: :class:`Refusal` carries the ``cmd_id`` and command kind when the JSON names them, so the
fleet can match the refusal to what it sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from edge_agent.contracts.bundle import sha256_hex
from edge_agent.contracts.payloads import (
    Command,
    DesiredStateCommand,
    PayloadError,
    TransferChunkPayload,
    decode,
    decode_command,
)
from edge_agent.contracts.topics import DeviceTopics

__all__ = ["Chunk", "Refusal", "read_message"]


@dataclass(frozen=True)
class Refusal:
    """A message refused before anything was done; ack it with step ``refused``."""

    cmd_id: str
    command: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """A decoded, hash-checked chunk (``ok`` False: the hash differs, ``reason`` says how)."""

    payload: TransferChunkPayload
    data: bytes
    reason: str | None = None


def _names(raw: bytes) -> tuple[str, str]:
    """The ``cmd_id`` and ``kind`` a raw message names, as far as it names them."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "unknown", "unknown"
    if not isinstance(obj, dict):
        return "unknown", "unknown"
    cmd_id = obj.get("cmd_id")
    kind = obj.get("kind")
    return (
        cmd_id if isinstance(cmd_id, str) and cmd_id else "unknown",
        kind if isinstance(kind, str) and kind else "unknown",
    )


def read_message(topics: DeviceTopics, topic: str, raw: bytes) -> Command | Chunk | Refusal | None:
    """Decode one control message; None for what needs no answer (a cleared retained desired)."""
    if topic == topics.transfer:
        try:
            chunk = decode(TransferChunkPayload, raw)
        except PayloadError as err:
            return Refusal("unknown", "transfer", str(err))
        try:
            data = base64.b64decode(chunk.data, validate=True)
        except (binascii.Error, ValueError) as err:
            return Chunk(chunk, b"", f"chunk {chunk.index} is not valid base64: {err}")
        digest = sha256_hex(data)
        if digest != chunk.sha256:
            return Chunk(
                chunk, b"", f"chunk {chunk.index} has sha256 {digest}, expected {chunk.sha256}"
            )
        return Chunk(chunk, data)
    if topic == topics.desired and not raw:
        return None  # the fleet cleared the retained desired state
    cmd_id, kind = _names(raw)
    try:
        command = decode_command(raw)
    except PayloadError as err:
        return Refusal(cmd_id, kind, str(err))
    if topic == topics.desired and not isinstance(command, DesiredStateCommand):
        reason = f"the desired topic carries desired-state only, not {kind}"
        return Refusal(command.cmd_id, command.kind, reason)
    return command
