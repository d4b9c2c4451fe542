"""StreamPush to srt:// through Debian's ffmpeg, against an ffmpeg SRT listener.

PyAV's bundled FFmpeg has no srt protocol, so these pushes go through the
ffmpeg child process. Each listener is an ffmpeg process the test starts on
127.0.0.1, writing what it receives to an MPEG-TS file that ffprobe reads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.studio import StreamPush
from hardware.camera import EncodedPacket, StreamInfo
from tests.studio.ffprobe import FFMPEG, decode_errors, probe
from tests.studio.packets import stream_packets

WAIT_S = 20.0
# By default ffmpeg analyses 5 s of its input before it writes its output.
STREAM_FOR_LISTENER_S = 7.0
FEED_SPEED = 8.0
COPY_TO_MPEGTS = ("-c", "copy", "-f", "mpegts")


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(4.0)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """Whether a socket is bound to UDP 127.0.0.1:``port`` (Linux /proc)."""
    local_address = f"0100007F:{port:04X}"
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(line.split()[1] == local_address for line in lines)


def wait_until(condition: Callable[[], bool], step: Callable[[], None]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        step()
        time.sleep(0.02)


class SrtListener:
    """An ffmpeg SRT listener on 127.0.0.1 that copies its input into ``output``."""

    def __init__(self, port: int, output: Path, *, passphrase: str | None = None):
        url = f"srt://127.0.0.1:{port}?mode=listener"
        if passphrase is not None:
            url += f"&passphrase={passphrase}"
        self.output = output
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [FFMPEG, "-nostdin", "-v", "error", "-i", url, *COPY_TO_MPEGTS, output],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + WAIT_S
        while not udp_port_bound(port):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the SRT listener did not start"
            time.sleep(0.02)

    def finish(self) -> int | None:
        """Wait for the listener to exit by itself, as it does when the link ends."""
        try:
            return self.process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def listeners() -> Iterator[list[SrtListener]]:
    started: list[SrtListener] = []
    yield started
    for listener in started:
        listener.stop()


class LiveFeed:
    """Feeds a push like a camera running ``FEED_SPEED`` times real time.

    The packets repeat in a loop with their timestamps moved on by the
    stream's length each time, so the timeline keeps going forward.
    """

    def __init__(self, push: StreamPush, packets: tuple[EncodedPacket, ...]) -> None:
        self.push = push
        self.packets = packets
        self.span = max(
            (p.pts + p.duration) * p.time_base for p in packets if p.kind == "video"
        )
        self.fed_s = 0.0
        self.position = 0
        self.started = time.monotonic()

    def step(self) -> None:
        due_s = (time.monotonic() - self.started) * FEED_SPEED
        while True:
            loop, index = divmod(self.position, len(self.packets))
            packet = self.packets[index]
            seconds = float(loop * self.span) + packet.seconds
            if seconds > due_s:
                return
            shift = int(loop * self.span / packet.time_base)
            self.push.feed(
                dataclasses.replace(
                    packet, pts=packet.pts + shift, dts=packet.dts + shift
                )
            )
            self.fed_s = seconds
            self.position += 1

    def run_until(self, condition: Callable[[], bool]) -> None:
        wait_until(condition, self.step)

    def run_for(self, stream_s: float, condition: Callable[[], bool]) -> None:
        """Feed ``stream_s`` more seconds of stream and until ``condition``."""
        until_s = self.fed_s + stream_s
        self.run_until(lambda: self.fed_s >= until_s and condition())


def relay_pids(port: int) -> list[int]:
    """Return the ffmpeg children of this process that send to ``port``."""
    pids = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
            arguments = (stat_path.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent_pid = int(stat.rsplit(")", 1)[1].split()[1])
        url = f"srt://127.0.0.1:{port}".encode()
        sends_to_port = any(argument.startswith(url) for argument in arguments)
        if parent_pid == os.getpid() and b"pipe:0" in arguments and sends_to_port:
            pids.append(int(stat_path.parent.name))
    return pids


def connected(push: StreamPush) -> Callable[[], bool]:
    return lambda: push.state()["connected"] is True


def assert_playable(path: Path) -> None:
    report = probe(path, input_format="mpegts")
    assert report.stream("video")["codec_name"] == "h264"
    assert report.stream("audio")["codec_name"] == "aac"
    video = report.packets_of("video")
    assert len(video) > 0
    assert video[0]["keyframe"]
    dts = [p["dts_time"] for p in video]
    assert dts == sorted(dts)
    assert decode_errors(path) == ""


def test_srt_push_delivers_playable_stream(stream, listeners, tmp_path):
    info, packets = stream
    port = free_udp_port()
    listener = SrtListener(port, tmp_path / "received.ts")
    listeners.append(listener)
    push = StreamPush(f"srt://127.0.0.1:{port}", info, queue_packets=4096)
    feed = LiveFeed(push, packets)
    try:
        feed.run_for(STREAM_FOR_LISTENER_S, connected(push))
        wait_until(lambda: push.state()["sent"] == feed.position, lambda: None)
        state = push.state()
        children = relay_pids(port)
    finally:
        push.close()
    assert state["dropped"] == 0
    assert state["last_error"] is None
    assert len(children) == 1
    assert push.state()["connected"] is False
    assert not Path(f"/proc/{children[0]}").exists()
    assert listener.finish() == 0
    assert_playable(listener.output)


def test_srt_push_reconnects_after_listener_restart(stream, listeners, tmp_path):
    info, packets = stream
    port = free_udp_port()
    first = SrtListener(port, tmp_path / "first.ts")
    listeners.append(first)
    push = StreamPush(f"srt://127.0.0.1:{port}", info, retry_s=0.05, max_retry_s=0.2)
    feed = LiveFeed(push, packets)
    try:
        feed.run_for(STREAM_FOR_LISTENER_S, connected(push))
        first.stop()
        feed.run_until(lambda: push.state()["reconnects"] >= 1)
        broken = push.state()
        second = SrtListener(port, tmp_path / "second.ts")
        listeners.append(second)
        feed.run_for(STREAM_FOR_LISTENER_S, connected(push))
        resumed = push.state()
    finally:
        push.close()
    assert broken["connected"] is False
    assert broken["last_error"].startswith("ffmpeg exited with status")
    assert resumed["sent"] > broken["sent"]
    assert second.finish() == 0
    assert_playable(first.output)
    assert_playable(second.output)


def test_srt_push_keeps_passphrase_secret(stream, listeners, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="appliance.studio.push")
    info, packets = stream
    port = free_udp_port()
    passphrase = secrets.token_hex(16)
    stream_id = secrets.token_hex(8)
    listener = SrtListener(port, tmp_path / "received.ts", passphrase=passphrase)
    listeners.append(listener)
    url = f"srt://127.0.0.1:{port}?passphrase={passphrase}&streamid={stream_id}"
    push = StreamPush(url, info, queue_packets=4096)
    feed = LiveFeed(push, packets)
    try:
        feed.run_for(STREAM_FOR_LISTENER_S, connected(push))
        state = push.state()
    finally:
        push.close()
    assert listener.finish() == 0
    assert_playable(listener.output)
    assert push.target == f"srt://127.0.0.1:{port}"
    assert "connected through" in caplog.text
    assert passphrase not in caplog.text
    assert stream_id not in caplog.text
    assert passphrase not in repr(state)


def test_srt_push_wrong_passphrase_error_is_redacted(
    stream, listeners, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="appliance.studio.push")
    info, packets = stream
    port = free_udp_port()
    listener_passphrase = secrets.token_hex(16)
    push_passphrase = secrets.token_hex(16)
    listeners.append(
        SrtListener(port, tmp_path / "unused.ts", passphrase=listener_passphrase)
    )
    url = f"srt://127.0.0.1:{port}?passphrase={push_passphrase}"
    push = StreamPush(url, info, retry_s=0.05, max_retry_s=0.2)
    feed = LiveFeed(push, packets)
    try:
        feed.run_until(lambda: push.state()["reconnects"] >= 1)
        state = push.state()
    finally:
        push.close()
    assert state["connected"] is False
    assert state["sent"] == 0
    assert state["last_error"].startswith("ffmpeg exited with status 1: ")
    assert "Incorrect passphrase" in state["last_error"]
    assert push_passphrase not in state["last_error"]
    # ffmpeg names the URL in its message; the log keeps only host and port.
    assert f"Connection to srt://127.0.0.1:{port} failed" in caplog.text
    assert push_passphrase not in caplog.text


@pytest.mark.parametrize("program", ["missing/ffmpeg", "/usr/bin/true"])
def test_srt_push_without_srt_ffmpeg_names_install(stream, tmp_path, program):
    info, packets = stream
    ffmpeg = str(tmp_path / program) if program.startswith("missing") else program
    url = f"srt://127.0.0.1:{free_udp_port()}"
    push = StreamPush(url, info, retry_s=0.05, ffmpeg=ffmpeg)
    feed = LiveFeed(push, packets)
    try:
        feed.run_until(lambda: push.state()["last_error"] is not None)
        feed.run_until(lambda: push.state()["dropped"] >= len(packets))
        state = push.state()
    finally:
        push.close()
    assert f"{ffmpeg} " in state["last_error"]
    assert "no srt protocol" in state["last_error"]
    assert "sudo apt-get install ffmpeg" in state["last_error"]
    assert state["reconnects"] == 0
    assert state["sent"] == 0


def test_srt_push_close_reaps_connecting_ffmpeg(stream):
    info, packets = stream
    port = free_udp_port()
    # No listener: the ffmpeg child is still connecting when the push closes,
    # because libsrt's caller waits 3 s for the handshake by default.
    push = StreamPush(f"srt://127.0.0.1:{port}", info)
    feed = LiveFeed(push, packets)
    try:
        feed.run_until(lambda: len(relay_pids(port)) == 1)
        children = relay_pids(port)
        state = push.state()
    finally:
        push.close()
    assert state["connected"] is False
    assert not Path(f"/proc/{children[0]}").exists()
    assert push.state()["last_error"] is None
