"""The serial frame format: encoding, checks, and resynchronisation."""

from __future__ import annotations

import zlib

import pytest

from hardware.serial_link import (
    MAX_LINE_BYTES,
    Frame,
    FrameDecoder,
    FrameError,
    decode_line,
    encode_frame,
)

HELLO = b'{"v":1,"id":"a","ts":1.0,"src":"reader/exit-1","data":{"reader":"exit-1"}}'


def frame_line(channel: str, payload: bytes) -> bytes:
    """Build a frame by hand, independently of encode_frame."""
    crc = zlib.crc32(channel.encode() + b" " + payload)
    return b"NB1 " + channel.encode() + b" %d %08x " % (len(payload), crc) + payload


def test_frame_encode_matches_format() -> None:
    assert encode_frame("hello", HELLO) == frame_line("hello", HELLO) + b"\n"


def test_frame_round_trip() -> None:
    line = encode_frame("availability", b"online")

    assert decode_line(line[:-1]) == Frame("availability", b"online")


def test_frame_empty_payload_rejected() -> None:
    # An empty payload is no JSON, so only availability could carry it,
    # and availability must say online or offline.
    with pytest.raises(FrameError, match="not JSON"):
        decode_line(frame_line("status", b""))


@pytest.mark.parametrize(
    ("channel", "payload", "named"),
    [
        ("clocks", b"{}", "unknown channel"),
        ("status", b"x" * 3073, "3072"),
        ("status", b'{"a":\n1}', "line break"),
    ],
)
def test_frame_encode_invalid(channel: str, payload: bytes, named: str) -> None:
    with pytest.raises(FrameError, match=named):
        encode_frame(channel, payload)


def test_frame_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        decode_line(b"NB1 hello")


def flip(line: bytes, index: int) -> bytes:
    data = bytearray(line)
    data[index] ^= 0x01
    return bytes(data)


GOOD = frame_line("hello", HELLO)
CORRUPT_LINES = [
    ("flipped-payload-byte", flip(GOOD, len(GOOD) - 5)),
    ("flipped-channel-byte", flip(GOOD, 5)),
    ("bad-crc", GOOD.replace(GOOD.split(b" ")[3], b"00000000")),
    ("crc-upper-case", GOOD.replace(GOOD.split(b" ")[3], GOOD.split(b" ")[3].upper())),
    ("crc-short", GOOD.replace(GOOD.split(b" ")[3], b"abc")),
    ("length-too-big", GOOD.replace(b" %d " % len(HELLO), b" %d " % (len(HELLO) + 1))),
    ("length-not-decimal", GOOD.replace(b" %d " % len(HELLO), b" 0x4c ")),
    ("length-over-limit", frame_line("status", b"1").replace(b" 1 ", b" 3073 ")),
    ("length-leading-zero", GOOD.replace(b" %d " % len(HELLO), b" 0%d " % len(HELLO))),
    ("truncated", GOOD[:-10]),
    ("fields-missing", b"NB1 hello 3"),
    ("unknown-channel", frame_line("cmnd", b"{}")),
    ("not-utf8", frame_line("status", b'{"a":"\xff\xfe"}')),
    ("not-json", frame_line("sightings", b'{"a":1')),
    ("json-nan", frame_line("status", b'{"a":NaN}')),
    ("json-deep-nesting", frame_line("status", b"[" * 1100 + b"]" * 1100)),
    ("json-number-overflow", frame_line("status", b'{"a":1e400}')),
    ("availability-other", frame_line("availability", b"maybe")),
    ("binary-after-magic", b"NB1 \x00\x01\x02\xff garbage"),
]


@pytest.mark.parametrize(
    "line", [line for _name, line in CORRUPT_LINES], ids=[n for n, _l in CORRUPT_LINES]
)
def test_frame_decoder_drops_corrupt(line: bytes) -> None:
    decoder = FrameDecoder("test")
    good = encode_frame("availability", b"online")

    frames = decoder.feed(good + line + b"\n" + good)

    assert frames == [Frame("availability", b"online")] * 2
    assert decoder.counts["corrupt"] == 1
    assert decoder.counts["frames"] == 2
    assert decoder.counts["noise"] == 0


def test_frame_decoder_counts_noise() -> None:
    decoder = FrameDecoder("test")
    banner = b"MicroPython v1.27.0 on 2025-12-09; Generic ESP32 module\r\n"
    garbage = bytes(range(256)).replace(b"\n", b"") + b"\n"

    frames = decoder.feed(banner + garbage + b"\n" + encode_frame("hello", HELLO))

    assert frames == [Frame("hello", HELLO)]
    assert decoder.counts["noise"] == 3
    assert decoder.counts["corrupt"] == 0


def test_frame_decoder_crlf_accepted() -> None:
    decoder = FrameDecoder("test")

    frames = decoder.feed(frame_line("availability", b"offline") + b"\r\n")

    assert frames == [Frame("availability", b"offline")]


def test_frame_decoder_split_reads() -> None:
    decoder = FrameDecoder("test")
    stream = encode_frame("hello", HELLO) * 3

    frames = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]

    assert frames == [Frame("hello", HELLO)] * 3


@pytest.mark.parametrize("chunk", [1000, MAX_LINE_BYTES + 10])
def test_frame_decoder_oversize_line(chunk: int) -> None:
    decoder = FrameDecoder("test")
    oversize = b"NB1 status 9 00000000 " + b"x" * (MAX_LINE_BYTES * 2) + b"\n"
    stream = encode_frame("hello", HELLO) + oversize + encode_frame("hello", HELLO)

    frames = []
    for start in range(0, len(stream), chunk):
        frames += decoder.feed(stream[start : start + chunk])

    assert frames == [Frame("hello", HELLO)] * 2
    assert decoder.counts["oversize"] == 1
    assert decoder.counts["corrupt"] == 0
    assert decoder.counts["noise"] == 0


def test_frame_decoder_max_line_accepted() -> None:
    decoder = FrameDecoder("test")
    payload = b'"' + b"x" * 3070 + b'"'
    line = frame_line("status", payload)

    assert len(line) <= MAX_LINE_BYTES
    assert decoder.feed(line + b"\n") == [Frame("status", payload)]
