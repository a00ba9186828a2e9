"""Payload codecs: turn the bytes of one sensor message into samples, or refuse them with a reason.

Every refusal is an :class:`~edge_agent.errors.InputRejected` whose ``reason`` is a short counter
name (``not_json``, ``non_finite`` ...) and whose ``detail`` says what a person should look at.
A codec sees the message's topic too, for the codecs that take the tag name from a topic level.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any, Protocol

from edge_agent.config import (
    CodecConfig,
    JsonBatchCodec,
    JsonObjectCodec,
    JsonRecordCodec,
    NumberCodec,
)
from edge_agent.errors import InputRejected
from edge_agent.sources.base import Quality, Sample

__all__ = [
    "Codec",
    "JsonBatchDecoder",
    "JsonObjectDecoder",
    "JsonRecordDecoder",
    "NumberDecoder",
    "build_codec",
    "parse_json",
    "to_float",
]

# A JSON batch may hold at most this many readings (a message is bounded by its byte size too).
MAX_BATCH_ITEMS = 10_000


class Codec(Protocol):
    def decode(self, payload: bytes, topic: str) -> list[Sample]:
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
    except ValueError as err:  # an integer literal longer than Python converts (4300 digits)
        raise InputRejected("not_json", f"payload is not usable JSON ({err})") from err


def to_float(value: object, name: str) -> float:
    """A finite float from a JSON value, or InputRejected naming the field."""
    if isinstance(value, bool) or value is None:
        raise InputRejected("not_a_number", f"{name} is {json.dumps(value)}, not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise InputRejected(
                "non_finite", f"{name} is an integer too large for a float"
            ) from None
    else:
        raise InputRejected(
            "not_a_number", f"{name} is {type(value).__name__} {str(value)[:40]!r}, not a number"
        )
    if not math.isfinite(number):
        raise InputRejected("non_finite", f"{name} is {number}, not a finite number")
    return number


def _lookup(obj: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``reading.value``), or KeyError naming the path."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _timestamp(value: object, path: str, unit: str) -> float:
    if unit == "iso":
        if not isinstance(value, str):
            raise InputRejected("bad_timestamp", f"{path} is not an ISO 8601 string")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise InputRejected("bad_timestamp", f"{path} {value[:40]!r} is not ISO 8601") from err
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    number = to_float(value, path)
    return number / 1000 if unit == "ms" else number


_QUALITY_WORDS = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}


def _quality(value: object, path: str) -> Quality:
    if isinstance(value, bool):
        return Quality.GOOD if value else Quality.BAD
    if isinstance(value, str) and value.lower() in _QUALITY_WORDS:
        return _QUALITY_WORDS[value.lower()]
    raise InputRejected(
        "bad_quality_field", f"{path} is {str(value)[:40]!r}; use good, uncertain, bad or a boolean"
    )


def _topic_level(topic: str, level: int, what: str) -> str:
    levels = topic.split("/")
    if level >= len(levels) or not levels[level]:
        raise InputRejected("no_tag", f"topic has no level {level} to name the {what}")
    return levels[level]


class JsonRecordDecoder:
    """A JSON object whose keys are tag names and values numbers; optional timestamp field."""

    def __init__(self, config: JsonRecordCodec) -> None:
        self._ts_field = config.timestamp_field

    def decode(self, payload: bytes, topic: str) -> list[Sample]:
        obj = parse_json(payload)
        if not isinstance(obj, dict):
            raise InputRejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
        ts = time.time()
        if self._ts_field is not None and self._ts_field in obj:
            ts = to_float(obj.pop(self._ts_field), self._ts_field)
        if not obj:
            raise InputRejected("empty", "the object holds no values")
        return [Sample(str(tag), to_float(value, str(tag)), ts) for tag, value in obj.items()]


class JsonObjectDecoder:
    """One reading per JSON object, its fields found by configurable dotted paths."""

    def __init__(self, config: JsonObjectCodec | JsonBatchCodec) -> None:
        self._config = config

    def decode(self, payload: bytes, topic: str) -> list[Sample]:
        obj = parse_json(payload)
        if not isinstance(obj, dict):
            raise InputRejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
        return [self.sample(obj, topic, "")]

    def sample(self, obj: dict[str, Any], topic: str, where: str) -> Sample:
        """The sample in one object; ``where`` locates it in a batch for error messages."""
        config = self._config
        try:
            value = _lookup(obj, config.value_path)
        except KeyError:
            raise InputRejected(
                "missing_value", f"{where}no value at {config.value_path}"
            ) from None
        if config.tag_level is not None:
            tag = _topic_level(topic, config.tag_level, "tag")
        else:
            assert config.tag_path is not None  # the config requires one of them
            try:
                raw_tag = _lookup(obj, config.tag_path)
            except KeyError:
                raise InputRejected("no_tag", f"{where}no tag name at {config.tag_path}") from None
            if not isinstance(raw_tag, str) or not raw_tag:
                raise InputRejected("no_tag", f"{where}{config.tag_path} is not a tag name")
            tag = raw_tag
        ts = time.time()
        if config.timestamp_path is not None:
            try:
                raw_ts = _lookup(obj, config.timestamp_path)
            except KeyError:
                pass  # no timestamp: the time of receipt
            else:
                ts = _timestamp(raw_ts, where + config.timestamp_path, config.timestamp_unit)
        quality = Quality.GOOD
        if config.quality_path is not None:
            try:
                raw_quality = _lookup(obj, config.quality_path)
            except KeyError:
                pass
            else:
                quality = _quality(raw_quality, where + config.quality_path)
        return Sample(tag, to_float(value, where + config.value_path), ts, quality)


class JsonBatchDecoder:
    """Several readings in one message: a JSON array of objects (or an array at ``items_path``)."""

    def __init__(self, config: JsonBatchCodec) -> None:
        self._items_path = config.items_path
        self._item = JsonObjectDecoder(config)

    def decode(self, payload: bytes, topic: str) -> list[Sample]:
        data = parse_json(payload)
        if self._items_path is not None:
            if not isinstance(data, dict):
                raise InputRejected("not_object", f"expected an object with {self._items_path}")
            try:
                data = _lookup(data, self._items_path)
            except KeyError:
                raise InputRejected("not_array", f"no array at {self._items_path}") from None
        if not isinstance(data, list):
            raise InputRejected("not_array", f"expected a JSON array, got {type(data).__name__}")
        if not data:
            raise InputRejected("empty", "the batch holds no readings")
        if len(data) > MAX_BATCH_ITEMS:
            raise InputRejected("oversized", f"{len(data)} readings exceed {MAX_BATCH_ITEMS}")
        samples = []
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise InputRejected("not_object", f"item {index} is not a JSON object")
            samples.append(self._item.sample(item, topic, f"item {index}: "))
        return samples


class NumberDecoder:
    """A payload that is one number as text (``21.5``); the tag name is a topic level."""

    def __init__(self, config: NumberCodec) -> None:
        self._tag_level = config.tag_level

    def decode(self, payload: bytes, topic: str) -> list[Sample]:
        try:
            text = payload.decode("ascii").strip()
            number = float(text)
        except (UnicodeDecodeError, ValueError):
            raise InputRejected(
                "not_a_number", f"payload {payload[:40]!r} is not a plain number"
            ) from None
        if not math.isfinite(number):
            raise InputRejected("non_finite", f"payload {text[:40]!r} is not a finite number")
        return [Sample(_topic_level(topic, self._tag_level, "tag"), number, time.time())]


def build_codec(config: CodecConfig) -> Codec:
    """The registry from a codec's config ``type`` to its decoder."""
    if isinstance(config, JsonRecordCodec):
        return JsonRecordDecoder(config)
    if isinstance(config, JsonObjectCodec):
        return JsonObjectDecoder(config)
    if isinstance(config, JsonBatchCodec):
        return JsonBatchDecoder(config)
    return NumberDecoder(config)
