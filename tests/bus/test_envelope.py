"""The JSON envelope: encoding, decoding, and a named reason for each bad payload."""

from __future__ import annotations

import json
import re
import time

import pytest

from appliance.bus.envelope import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    decode,
    encode,
    require,
)
from appliance.errors import PayloadError

VALID = {"v": 1, "id": "msg-1", "ts": 1780000000.5, "src": "reader/exit-1"}


def _payload(**changes: object) -> bytes:
    body = {**VALID, **changes}
    return json.dumps(body).encode()


def _without(field: str) -> bytes:
    body = {key: value for key, value in VALID.items() if key != field}
    return json.dumps(body).encode()


def _nested(depth: int) -> bytes:
    return b'{"v":1,"id":"a","ts":1,"data":{"x":' + b"[" * depth + b"]" * depth + b"}}"


def test_encode_decode_round_trip() -> None:
    data = {"reader": "exit-1", "seq": 3, "sightings": [{"rssi": -61.5}]}

    payload = encode("reader/exit-1", {"data": data})
    message = decode(payload)

    assert message.src == "reader/exit-1"
    assert message.data == data
    assert message.body["v"] == SCHEMA_VERSION
    assert message.body["id"] == message.id
    assert 1 <= len(message.id) <= 64
    assert abs(message.ts - time.time()) < 60


def test_encode_reply_fields_round_trip() -> None:
    error = {"code": "out-of-stock", "message": "kit station kit-1 has no kits left"}

    message = decode(encode("box/box-1", {"ok": False, "error": error}))

    assert message.body["ok"] is False
    assert message.body["error"] == error
    assert message.data == {}


def test_encode_fresh_id_per_message() -> None:
    first = decode(encode("box/box-1", {}))
    second = decode(encode("box/box-1", {}))

    assert first.id != second.id


def test_encode_given_message_id() -> None:
    message = decode(encode("box/box-1", {"data": {}}, message_id="event-42"))

    assert message.id == "event-42"


def test_encode_compact_json() -> None:
    payload = encode("box/box-1", {"data": {"a": [1, 2]}})

    assert b" " not in payload
    assert json.loads(payload)["data"] == {"a": [1, 2]}


def test_decode_src_defaults_to_empty() -> None:
    assert decode(_without("src")).src == ""


def test_decode_integer_ts() -> None:
    message = decode(_payload(ts=1780000000))

    assert message.ts == 1780000000.0
    assert isinstance(message.ts, float)


def test_decode_payload_at_size_limit() -> None:
    base = _payload(pad="")
    padded = _payload(pad="x" * (MAX_PAYLOAD_BYTES - len(base)))

    assert len(padded) == MAX_PAYLOAD_BYTES
    assert decode(padded).body["pad"].startswith("x")


MALFORMED = [
    (
        "over the size limit",
        _payload(pad="x" * MAX_PAYLOAD_BYTES),
        "exceeds the limit of 262144 bytes",
    ),
    ("garbage bytes", b"\x00\x01\x02garbage\xff", "not UTF-8 JSON"),
    ("invalid UTF-8", b'{"v":1,"id":"\xff\xfe","ts":1}', "not UTF-8 JSON"),
    ("empty", b"", "not UTF-8 JSON"),
    ("truncated", b'{"v":1,"id":"a"', "not UTF-8 JSON"),
    ("list", b"[1, 2]", "must be a JSON object, not list"),
    ("string", b'"hello"', "must be a JSON object, not str"),
    ("number", b"42", "must be a JSON object, not int"),
    ("null", b"null", "must be a JSON object, not NoneType"),
    ("v missing", _without("v"), "schema version v=None"),
    ("v 2", _payload(v=2), "schema version v=2"),
    ("v string", _payload(v="1"), "schema version v='1'"),
    ("v true", _payload(v=True), "schema version v=True"),
    ("id missing", _without("id"), "field 'id'"),
    ("id empty", _payload(id=""), "field 'id'"),
    ("id too long", _payload(id="x" * 65), "field 'id'"),
    ("id number", _payload(id=7), "field 'id'"),
    ("ts missing", _without("ts"), "field 'ts'"),
    ("ts string", _payload(ts="1780000000"), "field 'ts'"),
    ("ts boolean", _payload(ts=True), "field 'ts'"),
    ("ts NaN", _payload(ts=float("nan")), "not UTF-8 JSON"),
    ("ts Infinity", _payload(ts=float("inf")), "not UTF-8 JSON"),
    ("ts -Infinity", _payload(ts=float("-inf")), "not UTF-8 JSON"),
    ("ts overflows a float", _payload(ts=10**400), "not UTF-8 JSON"),
    ("ts 1e999", b'{"v":1,"id":"a","ts":1e999}', "not UTF-8 JSON"),
    ("src number", _payload(src=5), "field 'src'"),
    ("data list", _payload(data=[]), "field 'data'"),
    ("data string", _payload(data="x"), "field 'data'"),
    ("data null", _payload(data=None), "field 'data'"),
    ("deeply nested", _nested(100_000), "depth limit exceeded"),
    (
        "5000-digit number",
        b'{"v":1,"id":"a","ts":1,"x":1' + b"0" * 5000 + b"}",
        "not UTF-8 JSON",
    ),
]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [pytest.param(payload, expected, id=name) for name, payload, expected in MALFORMED],
)
def test_decode_malformed_names_problem(payload: bytes, expected: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(expected)):
        decode(payload)


def test_payload_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        decode(b"[]")


def test_require_returns_typed_value() -> None:
    data = {"seq": 3, "name": "exit-1", "flag": False}

    assert require(data, "seq", int) == 3
    assert require(data, "name", (str, bytes)) == "exit-1"
    assert require(data, "flag", bool) is False


@pytest.mark.parametrize(
    ("data", "kind", "expected"),
    [
        pytest.param({}, int, "missing field 'seq'", id="missing"),
        pytest.param({"seq": None}, int, "missing field 'seq'", id="null"),
        pytest.param(
            {"seq": True}, int, "field 'seq' must not be a boolean", id="bool"
        ),
        pytest.param({"seq": "3"}, int, "field 'seq' has the wrong type", id="string"),
        pytest.param(
            {"seq": 3.5}, (int,), "field 'seq' has the wrong type", id="float"
        ),
    ],
)
def test_require_rejects(data: dict[str, object], kind: type, expected: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(expected)):
        require(data, "seq", kind)
