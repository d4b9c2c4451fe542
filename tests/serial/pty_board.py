"""The board's end of a pseudo-terminal pair, standing in for a reader on USB.

The box opens the slave path with pyserial as it would open /dev/ttyUSB0;
the test writes and reads frames on the master file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

from hardware.serial_link import Frame, FrameDecoder


class PtyBoard:
    """The master side of a pty: raw writes and decoded frames read back."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        # pyserial opens the path itself; the test keeps no slave descriptor,
        # so closing the master makes the port vanish.
        os.close(slave)
        os.set_blocking(self.master, False)
        self.decoder = FrameDecoder(f"board {self.path}")
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._reading = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                # The slave's input buffer (4 KiB on Linux) is full until
                # pyserial reads, so the loop yields to its thread.
                os.sched_yield()
                continue
            view = view[written:]

    def start_reading(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return
        for frame in self.decoder.feed(data):
            self.frames.put_nowait(frame)

    async def next_frame(self, channel: str, timeout_s: float = 10.0) -> Frame:
        """Return the next frame on ``channel``, skipping other channels."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.frames.get()
                if frame.channel == channel:
                    return frame

    def close(self) -> None:
        if self._reading:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self.master)
            self._reading = False
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@contextlib.contextmanager
def pty_board() -> Iterator[PtyBoard]:
    board = PtyBoard()
    try:
        yield board
    finally:
        board.close()
