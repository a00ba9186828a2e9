from __future__ import annotations

import json

import pytest

from edge_agent.contracts.payloads import (
    ActivateCommand,
    PayloadError,
    ResultPayload,
    SchemaVersionError,
    StatusPayload,
    decode,
    decode_command,
)


def _result() -> ResultPayload:
    return ResultPayload(
        record_id="r1",
        seq=4,
        device="d",
        site="s",
        ts=1.0,
        asset="a",
        model="m",
        model_version="1",
        window_end=1.0,
        outputs={"score": 0.5, "label": "ok"},
        latency_ms=0.1,
    )


def test_round_trip_carries_the_schema_version() -> None:
    raw = _result().to_json()
    assert json.loads(raw)["schema_version"] == 1
    assert decode(ResultPayload, raw) == _result()


def test_unknown_schema_version_is_refused_with_a_clear_message() -> None:
    raw = json.loads(_result().to_json())
    raw["schema_version"] = 99
    with pytest.raises(
        SchemaVersionError,
        match=r"result payload refused: schema_version 99 is not supported \(this build reads 1\)",
    ):
        decode(ResultPayload, json.dumps(raw))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"state": "online"}', "schema_version is missing"),
        (b'{"schema_version": "1", "state": "online"}', "schema_version '1' is not supported"),
        (b'{"schema_version": true}', "schema_version True is not supported"),
        (
            b'{"schema_version": 1, "state": "dancing", "device": "d", "site": "s", "ts": 1, "agent_version": "x"}',
            "state",
        ),
        (
            b'{"schema_version": 1, "state": "online", "device": "d", "site": "s", "ts": 1, "agent_version": "x", "extra": 1}',
            "extra",
        ),
    ],
)
def test_bad_payloads_raise_payload_error_never_crash(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match="status payload refused") as caught:
        decode(StatusPayload, raw)
    assert reason in str(caught.value)


def test_commands_decode_by_kind_and_unknown_kinds_are_refused() -> None:
    command = decode_command(
        json.dumps(
            {
                "schema_version": 1,
                "kind": "activate",
                "cmd_id": "c1",
                "ts": 1,
                "model": "m",
                "version": "2",
            }
        )
    )
    assert isinstance(command, ActivateCommand) and command.version == "2"
    with pytest.raises(PayloadError, match="command payload refused"):
        decode_command(
            json.dumps({"schema_version": 1, "kind": "self-destruct", "cmd_id": "c1", "ts": 1})
        )
    with pytest.raises(SchemaVersionError):
        decode_command(
            json.dumps({"schema_version": 2, "kind": "rollback", "cmd_id": "c1", "ts": 1})
        )
