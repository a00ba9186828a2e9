"""Payload codecs: JSON record, JSON object with paths, JSON batch, plain number; every refusal
has a reason, and no payload at all makes a codec raise anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from edge_agent.codecs import build_codec
from edge_agent.config import CodecConfig
from edge_agent.errors import InputRejected
from edge_agent.sources.base import Quality

CODEC: TypeAdapter[CodecConfig] = TypeAdapter(CodecConfig)


def codec(**config: object):  # type: ignore[no-untyped-def]
    return build_codec(CODEC.validate_python(config))


def test_json_object_with_nested_paths_and_quality() -> None:
    decoder = codec(
        type="json_object",
        value_path="data.v",
        tag_path="meta.tag",
        timestamp_path="data.t",
        timestamp_unit="ms",
        quality_path="data.q",
    )
    payload = {
        "meta": {"tag": "vibration"},
        "data": {"v": 1.5, "t": 1700000000500, "q": "Uncertain"},
    }
    [sample] = decoder.decode(json.dumps(payload).encode(), "any/topic")
    assert (sample.tag, sample.value, sample.ts, sample.quality) == (
        "vibration",
        1.5,
        1700000000.5,
        Quality.UNCERTAIN,
    )


def test_json_object_tag_from_a_topic_level_and_iso_time() -> None:
    decoder = codec(type="json_object", tag_level=3, timestamp_unit="iso")
    payload = b'{"value": 2, "ts": "2026-01-01T00:00:01+00:00"}'
    [sample] = decoder.decode(payload, "plant/line/pump-1/flow")
    assert (sample.tag, sample.value, sample.ts) == ("flow", 2.0, 1767225601.0)


def test_json_batch_at_a_path() -> None:
    decoder = codec(type="json_batch", items_path="readings", tag_path="name")
    payload = {
        "readings": [{"name": "a", "value": 1, "ts": 10}, {"name": "b", "value": 2, "ts": 11}]
    }
    samples = decoder.decode(json.dumps(payload).encode(), "t")
    assert [(s.tag, s.value, s.ts) for s in samples] == [("a", 1.0, 10.0), ("b", 2.0, 11.0)]


def test_plain_number_names_its_tag_by_topic_level() -> None:
    decoder = codec(type="number", tag_level=1)
    [sample] = decoder.decode(b" 21.5\n", "pump-1/temperature")
    assert (sample.tag, sample.value) == ("temperature", 21.5)


@pytest.mark.parametrize(
    ("config", "payload", "topic", "reason", "names"),
    [
        ({"type": "number", "tag_level": 1}, b"hot", "a/b", "not_a_number", "hot"),
        ({"type": "number", "tag_level": 1}, b"nan", "a/b", "non_finite", "nan"),
        ({"type": "number", "tag_level": 5}, b"1", "a/b", "no_tag", "level 5"),
        ({"type": "json_object", "tag_path": "n"}, b'{"n": "x"}', "t", "missing_value", "value"),
        ({"type": "json_object", "tag_path": "n"}, b'{"value": 1}', "t", "no_tag", "n"),
        (
            {"type": "json_object", "tag_path": "n", "quality_path": "q"},
            b'{"n": "x", "value": 1, "q": 7}',
            "t",
            "bad_quality_field",
            "q",
        ),
        (
            {"type": "json_object", "tag_path": "n", "timestamp_unit": "iso"},
            b'{"n": "x", "value": 1, "ts": "yesterday"}',
            "t",
            "bad_timestamp",
            "ts",
        ),
        ({"type": "json_batch", "tag_path": "n"}, b"{}", "t", "not_array", "array"),
        ({"type": "json_batch", "tag_path": "n"}, b"[]", "t", "empty", "no readings"),
        (
            {"type": "json_batch", "tag_path": "n"},
            b'[{"n": "a", "value": 1}, {"n": "b", "value": "x"}]',
            "t",
            "not_a_number",
            "item 1: value",
        ),
    ],
)
def test_refusals_name_their_reason_and_the_field(
    config: dict[str, object], payload: bytes, topic: str, reason: str, names: str
) -> None:
    with pytest.raises(InputRejected) as refused:
        codec(**config).decode(payload, topic)
    assert refused.value.reason == reason
    assert names in refused.value.detail


def test_a_json_codec_needs_one_way_to_name_the_tag() -> None:
    with pytest.raises(ValueError, match="exactly one of tag_path or tag_level"):
        CODEC.validate_python({"type": "json_object"})


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["value", "ts", "n", "q", "x"]), children, max_size=5)
    ),
    max_leaves=20,
)
payloads = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())
CONFIGS = [
    {"type": "json_record"},
    {"type": "json_object", "tag_path": "n", "quality_path": "q"},
    {"type": "json_object", "tag_level": 1, "timestamp_unit": "iso"},
    {"type": "json_batch", "tag_path": "n"},
    {"type": "number", "tag_level": 1},
]


@settings(max_examples=300, deadline=None)
@given(payload=payloads, config=st.sampled_from(CONFIGS))
def test_any_payload_decodes_or_is_refused_with_a_reason(
    payload: bytes, config: dict[str, object]
) -> None:
    refused: InputRejected | None = None
    try:
        samples = codec(**config).decode(payload, "plant/tag")
    except InputRejected as err:
        refused, samples = err, []
    if refused is not None:
        assert refused.reason and refused.detail
    for sample in samples:
        assert isinstance(sample.value, float) and sample.tag
