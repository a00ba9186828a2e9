"""Payload codecs: turn the bytes of one sensor message into samples, or refuse them with a reason.

Every refusal is an :class:`~edge_agent.errors.InputRejected` whose ``reason`` is a short counter
name (``not_json``, ``non_finite`` ...) and whose ``detail`` says what a person should look at.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Protocol

from edge_agent.config import JsonRecordCodec
from edge_agent.errors import InputRejected
from edge_agent.sources.base import Sample

__all__ = ["Codec", "JsonRecordDecoder", "build_codec", "parse_json", "to_float"]


class Codec(Protocol):
    def decode(self, payload: bytes) -> list[Sample]:
        """Decode one message; raise InputRejected when it cannot be used. Pure and thread-safe."""
        ...


def _reject_constant(token: str) -> float:
    raise InputRejected("non_finite", f"{token} is not a finite number")


def parse_json(payload: bytes) -> Any:
    """Parse JSON, refusing NaN and Infinity literals (which Python would otherwise accept)."""
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise InputRejected("not_json", f"payload is not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise InputRejected(
            "not_json", f"payload is not JSON ({err.msg} at char {err.pos})"
        ) from err
    except RecursionError as err:
        raise InputRejected("not_json", "payload nests too deeply") from err


def to_float(value: object, name: str) -> float:
    """A finite float from a JSON value, or InputRejected naming the field."""
    if isinstance(value, bool) or value is None:
        raise InputRejected("not_a_number", f"{name} is {json.dumps(value)}, not a number")
    if isinstance(value, int | float):
        number = float(value)
    else:
        raise InputRejected(
            "not_a_number", f"{name} is {type(value).__name__} {str(value)[:40]!r}, not a number"
        )
    if not math.isfinite(number):
        raise InputRejected("non_finite", f"{name} is {number}, not a finite number")
    return number


class JsonRecordDecoder:
    """A JSON object whose keys are tag names and values numbers; optional timestamp field."""

    def __init__(self, config: JsonRecordCodec) -> None:
        self._ts_field = config.timestamp_field

    def decode(self, payload: bytes) -> list[Sample]:
        obj = parse_json(payload)
        if not isinstance(obj, dict):
            raise InputRejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
        ts = time.time()
        if self._ts_field is not None and self._ts_field in obj:
            ts = to_float(obj.pop(self._ts_field), self._ts_field)
        if not obj:
            raise InputRejected("empty", "the object holds no values")
        return [Sample(str(tag), to_float(value, str(tag)), ts) for tag, value in obj.items()]


def build_codec(config: JsonRecordCodec) -> Codec:
    """The registry from a codec's config ``type`` to its decoder."""
    if config.type == "json_record":
        return JsonRecordDecoder(config)
    raise AssertionError(f"unhandled codec type {config.type!r}")
