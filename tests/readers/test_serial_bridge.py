"""Readers on USB serial, served by the box's bridge through mosquitto.

Each reader's port is a pseudo-terminal: the box opens the slave path with
pyserial, and the test plays the board on the master side. exit-3 is an
exit reader and kit-3 a kit station, both with uplink = "serial".
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SITE_UUID, ClientFactory, make_site_config, strong_batches

from appliance.bus.client import Incoming
from appliance.config import CheckoutConfig, ReaderConfig, SiteConfig
from appliance.readers.serial_bridge import SerialBridge
from appliance.runtime import Box
from appliance.sim import _adverts
from hardware.serial_link import encode_frame

sys.path.insert(0, str(Path(__file__).parent.parent / "serial"))
from pty_board import PtyBoard

TIMEOUT_S = 10.0


@pytest.fixture
def boards() -> Iterator[dict[str, PtyBoard]]:
    opened = {"exit-3": PtyBoard(), "kit-3": PtyBoard()}
    try:
        yield opened
    finally:
        for board in opened.values():
            board.close()


@pytest.fixture
def site_config(
    tmp_path: Path, boards: dict[str, PtyBoard], request: pytest.FixtureRequest
) -> SiteConfig:
    config = make_site_config(tmp_path / "box")
    serial_exit = ReaderConfig(
        "exit-3", "exit", uplink="serial", serial_port=boards["exit-3"].path
    )
    serial_kit = ReaderConfig(
        "kit-3", "kit", kit_stock=5, uplink="serial", serial_port=boards["kit-3"].path
    )
    readers = (*config.readers, serial_exit, serial_kit)
    silence_s = getattr(request, "param", 10.0)
    return dataclasses.replace(
        config, readers=readers, checkout=CheckoutConfig(silence_s=silence_s)
    )


def envelope(reader_id: str, fields: dict[str, Any]) -> bytes:
    body = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "ts": round(time.time(), 3),
        "src": f"reader/{reader_id}",
        **fields,
    }
    return orjson.dumps(body)


def hello(reader_id: str, role: str) -> bytes:
    data = {"reader": reader_id, "role": role, "boot": "0a1b2c3d", "fw": "1.0.0"}
    return encode_frame("hello", envelope(reader_id, {"data": data}))


async def until(check: Callable[[], Any]) -> Any:
    """Return the first true result of ``check``, polled for up to TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def bridge_open(box: Box, reader_id: str) -> None:
    bridge = next(b for b in box.serial_bridges if b.reader.id == reader_id)
    assert await until(lambda: bridge.status()["open"])


def serial_status(box: Box, reader_id: str) -> dict[str, Any]:
    status: dict[str, Any] = box.status()["readers_serial"][reader_id]
    return status


async def wait_for_count(box: Box, reader_id: str, key: str, value: int) -> int:
    await until(lambda: serial_status(box, reader_id).get(key, 0) >= value)
    return int(serial_status(box, reader_id).get(key, 0))


class Watcher:
    """Messages on some topics, as an observer account receives them."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()

    async def on_message(self, incoming: Incoming) -> None:
        await self.messages.put((incoming.topic, incoming.payload, incoming.retain))

    async def wait_for(self, topic: str, payload: bytes) -> bool:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                seen_topic, seen_payload, _retain = await self.messages.get()
                if seen_topic == topic and seen_payload == payload:
                    return True


@pytest.fixture
async def watcher(make_client: ClientFactory) -> AsyncIterator[Watcher]:
    watching = Watcher()
    async with make_client(
        "observer", "observer", "serial", announce=False, wait=False
    ) as observer:
        observer.subscribe("nightbox/test/+/+/availability", watching.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield watching


async def test_serial_sightings_give_checkout(
    box: Box, boards: dict[str, PtyBoard], site_config: SiteConfig, watcher: Watcher
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    board.write(b"MicroPython v1.27.0 on 2025-12-09; Generic ESP32 module\r\n")
    board.write(hello("exit-3", "exit"))
    board.write(encode_frame("availability", b"online"))
    for batch in strong_batches(site_config, "exit-3", 31, "0a1b2c3d"):
        board.write(encode_frame("sightings", envelope("exit-3", {"data": batch})))

    online = await watcher.wait_for(
        "nightbox/test/reader/exit-3/availability", b"online"
    )
    await until(lambda: box.store.query("SELECT band FROM checkouts"))
    # The check-out may come before the last batch is published.
    await wait_for_count(box, "exit-3", "published", 6)

    assert online
    assert box.store.query("SELECT band, reader FROM checkouts") == [
        ("ib-1-31", "exit-3")
    ]
    status = serial_status(box, "exit-3")
    assert status["frames"] == 7
    assert status["noise"] == 1
    assert status["published"] == 6
    assert status["hello"] == 1


async def test_serial_bad_frames_counted(
    box: Box, boards: dict[str, PtyBoard], site_config: SiteConfig
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    batches = strong_batches(site_config, "exit-3", 32, "0a1b2c3d")
    good = [encode_frame("sightings", envelope("exit-3", {"data": b})) for b in batches]
    flipped = bytearray(good[0])
    flipped[40] ^= 0x04
    board.write(hello("exit-3", "exit"))
    board.write(bytes(flipped) + good[0] + b"\xde\xad\xbe\xef\n" + good[1])
    board.write(b"NB1 sightings " + b"9" * 5000 + b"\n" + good[2])
    board.write(good[3][:30] + b"\n" + encode_frame("status", b"[1,2") + good[4])

    # good[3] was truncated, so four of the five batches arrive.
    await until(lambda: box.checkouts.stats.batches >= 4)

    status = serial_status(box, "exit-3")
    assert box.store.query("SELECT band FROM checkouts") == [("ib-1-32",)]
    assert status["corrupt"] == 3
    assert status["noise"] == 1
    assert status["oversize"] == 1
    assert box.checkouts.stats.batches == 4


async def test_serial_kit_request_answered(
    box: Box, boards: dict[str, PtyBoard]
) -> None:
    board = boards["kit-3"]
    board.start_reading()
    await bridge_open(box, "kit-3")
    advert = _adverts.ibeacon(SITE_UUID, 1, 33, -59).hex()
    request = envelope(
        "kit-3",
        {
            "deadline": round(time.time() + 2, 3),
            "reply_to": "nightbox/test/reader/kit-3/reply",
            "corr": "00c0ffee",
            "data": {
                "station": "kit-3",
                "adv": advert,
                "idempotency_key": "0a1b2c3d-1",
            },
        },
    )
    board.write(hello("kit-3", "kit"))
    board.write(encode_frame("api/kits/issue", request))

    frame = await board.next_frame("reply")

    reply = orjson.loads(frame.payload)
    assert reply["ok"] is True
    assert reply["corr"] == "00c0ffee"
    assert reply["data"]["band"] == "ib-1-33"
    assert reply["data"]["station"] == "kit-3"
    assert box.kits.stock()["kit-3"]["remaining"] == 4


async def test_serial_wrong_reader_ignored(
    box: Box, boards: dict[str, PtyBoard], site_config: SiteConfig
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    batches = strong_batches(site_config, "exit-3", 34, "0a1b2c3d")
    frames = [
        encode_frame("sightings", envelope("exit-3", {"data": b})) for b in batches
    ]
    board.write(hello("exit-1", "exit"))
    board.write(b"".join(frames[:3]))
    ignored = await wait_for_count(box, "exit-3", "ignored", 3)
    batches_while_wrong = box.checkouts.stats.batches
    board.write(hello("exit-3", "exit"))
    board.write(b"".join(frames[3:]))
    published = await wait_for_count(box, "exit-3", "published", 2)

    assert ignored == 3
    assert batches_while_wrong == 0
    assert published == 2
    assert serial_status(box, "exit-3")["wrong-reader"] == 1


async def test_serial_wrong_role_ignored(box: Box, boards: dict[str, PtyBoard]) -> None:
    board = boards["kit-3"]
    await bridge_open(box, "kit-3")
    board.write(hello("kit-3", "exit"))
    board.write(encode_frame("availability", b"online"))

    ignored = await wait_for_count(box, "kit-3", "ignored", 1)

    assert ignored == 1
    assert serial_status(box, "kit-3")["wrong-reader"] == 1


async def test_serial_hello_escaped_in_log(
    box: Box, boards: dict[str, PtyBoard], caplog: pytest.LogCaptureFixture
) -> None:
    board = boards["kit-3"]
    await bridge_open(box, "kit-3")
    board.write(hello("kit-3", "\x1b[2J\x1b[31mkit"))

    await wait_for_count(box, "kit-3", "wrong-reader", 1)

    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "appliance.readers.serial_bridge"
    ]
    wrong = [line for line in lines if "says it is" in line]
    assert len(wrong) == 1
    assert "\x1b" not in wrong[0]
    assert "\\x1b[2J" in wrong[0]


async def test_serial_forbidden_channel(box: Box, boards: dict[str, PtyBoard]) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    request = envelope(
        "exit-3",
        {
            "data": {
                "station": "kit-3",
                "band": "ib-1-35",
                "idempotency_key": "0a1b2c3d-2",
            }
        },
    )
    board.write(hello("exit-3", "exit"))
    board.write(encode_frame("api/kits/issue", request))
    board.write(encode_frame("clock", b'{"t":1}'))

    forbidden = await wait_for_count(box, "exit-3", "forbidden", 2)

    assert forbidden == 2
    assert box.kits.stock()["kit-3"]["remaining"] == 5
    assert box.requests.counts["kits/issue:ok"] == 0


async def test_serial_clock_written_down(box: Box, boards: dict[str, PtyBoard]) -> None:
    board = boards["exit-3"]
    board.start_reading()
    await bridge_open(box, "exit-3")

    # The beacon runs every 5 s, so this waits up to one interval.
    frame = await board.next_frame("clock", TIMEOUT_S)

    body = orjson.loads(frame.payload)
    assert body["src"] == "box/box-1"
    assert abs(body["data"]["t"] - time.time()) < 10.0
    assert body["data"]["trusted"] is True


async def test_serial_port_vanishes_offline(
    box: Box, boards: dict[str, PtyBoard], watcher: Watcher
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    board.write(hello("exit-3", "exit") + encode_frame("availability", b"online"))
    await watcher.wait_for("nightbox/test/reader/exit-3/availability", b"online")

    board.close()

    offline = await watcher.wait_for(
        "nightbox/test/reader/exit-3/availability", b"offline"
    )
    errors = await wait_for_count(box, "exit-3", "port_errors", 1)
    assert offline
    assert errors == 1
    assert serial_status(box, "exit-3")["open"] is False


@pytest.mark.parametrize("site_config", [0.5], indirect=True, ids=["silence-0.5s"])
async def test_serial_silence_offline(
    box: Box, boards: dict[str, PtyBoard], watcher: Watcher
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    board.write(hello("exit-3", "exit") + encode_frame("availability", b"online"))
    await watcher.wait_for("nightbox/test/reader/exit-3/availability", b"online")

    offline = await watcher.wait_for(
        "nightbox/test/reader/exit-3/availability", b"offline"
    )
    board.write(encode_frame("status", envelope("exit-3", {"data": {}})))
    back = await watcher.wait_for("nightbox/test/reader/exit-3/availability", b"online")

    assert offline
    assert back
    assert serial_status(box, "exit-3")["silences"] == 1
    assert serial_status(box, "exit-3")["open"] is True


async def test_serial_deep_nesting_survives(
    box: Box, boards: dict[str, PtyBoard]
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    board.write(hello("exit-3", "exit"))
    board.write(encode_frame("status", b"[" * 1100 + b"]" * 1100))
    board.write(encode_frame("status", envelope("exit-3", {"data": {}})))

    published = await wait_for_count(box, "exit-3", "published", 1)

    status = serial_status(box, "exit-3")
    assert published == 1
    assert status["corrupt"] == 1
    assert status["open"] is True
    assert status["last_error"] is None
    assert status.get("port_errors", 0) == 0
    assert status["internal_errors"] == 0


async def test_serial_wrong_reader_log_limited(
    box: Box, boards: dict[str, PtyBoard], caplog: pytest.LogCaptureFixture
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    board.write(b"".join(hello("exit-1", "exit") for _ in range(2000)))

    wrong = await wait_for_count(box, "exit-3", "wrong-reader", 2000)

    warnings = [
        record
        for record in caplog.records
        if record.name == "appliance.readers.serial_bridge"
        and "but the board says" in record.getMessage()
    ]
    assert wrong == 2000
    assert 1 <= len(warnings) <= 2


@pytest.fixture
async def status_watcher(make_client: ClientFactory) -> AsyncIterator[Watcher]:
    watching = Watcher()
    async with make_client(
        "observer", "observer", "serial-status", announce=False, wait=False
    ) as observer:
        observer.subscribe("nightbox/test/reader/exit-3/status", watching.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield watching


async def test_serial_invalid_status_dropped(
    box: Box, boards: dict[str, PtyBoard], status_watcher: Watcher
) -> None:
    board = boards["exit-3"]
    await bridge_open(box, "exit-3")
    good = envelope("exit-3", {"data": {"uptime_s": 5}})
    invalid = [
        b"[1,2,3]",
        b'{"v":1,"ts":1.0,"src":"reader/exit-3","data":{}}',
        b'{"v":2,"id":"a","ts":1.0,"src":"reader/exit-3","data":{}}',
        b'{"v":1,"id":"a","ts":"x","src":"reader/exit-3","data":{}}',
        b'{"v":1,"id":"a","ts":1.0,"src":"reader/exit-3","data":[1]}',
    ]
    board.write(hello("exit-3", "exit"))
    board.write(b"".join(encode_frame("status", payload) for payload in invalid))
    board.write(encode_frame("status", good))

    topic, payload, retain = await asyncio.wait_for(
        status_watcher.messages.get(), TIMEOUT_S
    )

    status = serial_status(box, "exit-3")
    assert topic == "nightbox/test/reader/exit-3/status"
    assert payload == good
    assert retain is False
    assert status["corrupt"] == len(invalid)
    assert status["published"] == 1


async def test_serial_reopen_backs_off(box: Box) -> None:
    # A loopback server that accepts each connection and closes it at once:
    # pyserial's socket:// port opens, then its first read fails.
    connections = 0

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = ReaderConfig(
        "exit-9", "exit", uplink="serial", serial_port=f"socket://127.0.0.1:{port}"
    )
    bridge = SerialBridge(box.bus, reader, box.clock_beacon, silence_s=10.0)
    async with server:
        await bridge.start()
        await asyncio.sleep(2.0)
        await bridge.stop()

    status = bridge.status()
    # Back-off of 0.5 s, 1 s, 2 s: opens at 0, 0.5 and 1.5 s.
    assert 2 <= connections <= 4
    assert status["opens"] == connections
    assert status["port_errors"] >= 2
    assert "socket disconnected" in status["last_error"]
