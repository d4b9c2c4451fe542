"""SerialLink on a real pseudo-terminal, opened by pyserial like a USB port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pty_board import PtyBoard, pty_board

from hardware.serial_link import (
    Frame,
    SerialLink,
    SerialPortError,
    encode_frame,
)

TIMEOUT_S = 10.0
STATUS = b'{"v":1,"id":"s","ts":1.0,"src":"reader/exit-1","data":{"uptime_s":5}}'


class Received:
    """Frames and the close error that a link handed to the event loop."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.closed: asyncio.Future[SerialPortError] = (
            asyncio.get_running_loop().create_future()
        )

    def on_closed(self, error: SerialPortError) -> None:
        if not self.closed.done():
            self.closed.set_result(error)

    async def frame(self) -> Frame:
        return await asyncio.wait_for(self.frames.get(), TIMEOUT_S)


@pytest.fixture
async def board() -> AsyncIterator[PtyBoard]:
    with pty_board() as opened:
        yield opened


@pytest.fixture
async def received() -> Received:
    return Received()


@pytest.fixture
async def link(board: PtyBoard, received: Received) -> AsyncIterator[SerialLink]:
    async with SerialLink(
        board.path, received.frames.put_nowait, received.on_closed
    ) as opened:
        yield opened


async def test_link_frames_in_order(
    board: PtyBoard, link: SerialLink, received: Received
) -> None:
    board.write(b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET)\r\n")
    board.write(encode_frame("availability", b"online"))
    board.write(encode_frame("status", STATUS))

    first = await received.frame()
    second = await received.frame()

    assert first == Frame("availability", b"online")
    assert second == Frame("status", STATUS)
    assert link.counts["noise"] == 2
    assert link.counts["frames"] == 2


async def test_link_bad_lines_dropped(
    board: PtyBoard, link: SerialLink, received: Received
) -> None:
    good = encode_frame("status", STATUS)
    flipped = bytearray(good)
    flipped[-6] ^= 0x20
    bad_crc = good.replace(good.split(b" ")[3], b"deadbeef")
    bad_length = good.replace(b" %d " % len(STATUS), b" 12 ")
    truncated = good[: len(good) // 2] + b"\n"
    not_utf8 = encode_frame("status", b'{"a":"\xc3\x28"}')
    board.write(good + bytes(flipped) + good + bad_crc + bad_length)
    board.write(truncated + not_utf8 + b"\x00\xff\x13\x10garbage\n")
    board.write(b"NB1 " + b"z" * 6000 + b"\n" + good)

    frames = [await received.frame() for _ in range(3)]

    assert frames == [Frame("status", STATUS)] * 3
    assert link.counts["corrupt"] == 5
    assert link.counts["noise"] == 1
    assert link.counts["oversize"] == 1
    assert received.frames.empty()


async def test_link_writes_frames(board: PtyBoard, link: SerialLink) -> None:
    board.start_reading()
    clock = b'{"v":1,"id":"c","ts":1.5,"src":"box/box-1","data":{"t":1.5}}'

    assert link.send("clock", clock) is True
    assert link.send("reply", b'{"ok":true}') is True
    first = await board.next_frame("clock")
    second = await board.next_frame("reply")

    # The writer thread counts a frame after write() returns, which can be
    # after the board has read it.
    for _ in range(500):
        if link.counts["written"] == 2:
            break
        await asyncio.sleep(0.01)

    assert first.payload == clock
    assert second.payload == b'{"ok":true}'
    assert link.counts["written"] == 2
    assert board.decoder.counts["corrupt"] == 0


async def test_link_port_vanishes(
    board: PtyBoard, link: SerialLink, received: Received
) -> None:
    board.close()

    error = await asyncio.wait_for(received.closed, TIMEOUT_S)

    assert isinstance(error, SerialPortError)
    assert isinstance(error, OSError)
    assert board.path in str(error)


async def test_link_missing_device(received: Received) -> None:
    link = SerialLink("/dev/nightbox-no-such-port", print, received.on_closed)

    with pytest.raises(SerialPortError) as caught:
        await link.open()

    assert "/dev/nightbox-no-such-port" in str(caught.value)
    assert "serial_port" in str(caught.value)


async def test_link_port_held_exclusively(
    board: PtyBoard, link: SerialLink, received: Received
) -> None:
    second = SerialLink(board.path, print, received.on_closed)

    with pytest.raises(SerialPortError) as caught:
        await second.open()

    assert board.path in str(caught.value)
    assert "lock" in str(caught.value)


async def test_link_invalid_url(received: Received) -> None:
    link = SerialLink("nosuchscheme://x", print, received.on_closed)

    with pytest.raises(SerialPortError, match="nosuchscheme"):
        await link.open()


async def test_link_loop_url(received: Received) -> None:
    # pyserial's loop:// URL echoes what is written, so a URL opens too.
    async with SerialLink(
        "loop://", received.frames.put_nowait, received.on_closed
    ) as link:
        link.send("clock", b'{"t":1}')
        frame = await received.frame()

    assert frame == Frame("clock", b'{"t":1}')


async def test_link_send_after_close_dropped(
    board: PtyBoard, received: Received
) -> None:
    link = SerialLink(board.path, received.frames.put_nowait, received.on_closed)
    await link.open()
    await link.close()

    assert link.send("clock", b'{"t":1}') is False
    assert link.counts["write_dropped"] == 1
    assert not received.closed.done()


async def test_link_deep_nesting_corrupt(
    board: PtyBoard, link: SerialLink, received: Received
) -> None:
    nested = b"[" * 1100 + b"]" * 1100
    board.write(encode_frame("status", nested))
    board.write(encode_frame("status", STATUS))

    frame = await received.frame()

    assert frame == Frame("status", STATUS)
    assert link.counts["corrupt"] == 1
    assert link.counts["internal_errors"] == 0
    assert not received.closed.done()
