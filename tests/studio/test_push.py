"""StreamPush: MPEG-TS over TCP to a listener on loopback, drops and reconnects."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.studio import StreamPush
from hardware.camera import EncodedPacket, StreamInfo
from tests.studio.ffprobe import decode_errors, probe_bytes
from tests.studio.packets import stream_packets

WAIT_S = 20.0


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(4.0)


class Listener:
    """A TCP server on 127.0.0.1 that stores what its clients send."""

    def __init__(self, *, read: bool = True, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.read = read
        self.received: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                chunks = []
                connection.settimeout(0.1)
                while not self._stop.is_set():
                    if not self.read:
                        time.sleep(0.05)
                        continue
                    try:
                        chunk = connection.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    chunks.append(chunk)
                self.received.append(b"".join(chunks))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def wait_until(
    condition: Callable[[], bool], feed: Callable[[], None] | None = None
) -> None:
    """Poll ``condition``, calling ``feed`` between polls (a live camera)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        if feed is not None:
            feed()
        time.sleep(0.02)


def feeder(push: StreamPush, packets: tuple[EncodedPacket, ...]) -> Callable[[], None]:
    """Return a function that feeds the next GOP-sized batch of ``packets``."""
    position = 0

    def feed() -> None:
        nonlocal position
        for _ in range(40):
            push.feed(packets[position % len(packets)])
            position += 1

    return feed


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def test_push_sends_playable_mpegts(stream, listener: Listener):
    info, packets = stream
    push = StreamPush(f"tcp://127.0.0.1:{listener.port}", info, queue_packets=4096)
    for packet in packets:
        push.feed(packet)
    wait_until(lambda: push.state()["sent"] == len(packets))
    state = push.state()
    assert state["connected"] is True
    assert state["dropped"] == 0
    assert state["last_error"] is None
    push.close()
    assert push.state()["connected"] is False
    wait_until(lambda: len(listener.received) == 1)
    data = listener.received[0]
    report = probe_bytes(data, ".ts", input_format="mpegts")
    video = report.packets_of("video")
    assert video[0]["keyframe"]
    assert len(video) == sum(1 for p in packets if p.kind == "video")
    assert report.stream("audio")["codec_name"] == "aac"
    dts = [p["dts_time"] for p in video]
    assert dts == sorted(dts)


def test_push_output_decodes(stream, listener: Listener, tmp_path):
    info, packets = stream
    push = StreamPush(f"tcp://127.0.0.1:{listener.port}", info, queue_packets=4096)
    for packet in packets:
        push.feed(packet)
    wait_until(lambda: push.state()["sent"] == len(packets))
    push.close()
    wait_until(lambda: len(listener.received) == 1)
    path = tmp_path / "pushed.ts"
    path.write_bytes(listener.received[0])
    assert decode_errors(path) == ""


def test_push_starts_at_keyframe(stream, listener: Listener):
    info, packets = stream
    push = StreamPush(f"tcp://127.0.0.1:{listener.port}", info, queue_packets=4096)
    first_key = next(
        i for i, p in enumerate(packets) if i > 0 and p.kind == "video" and p.keyframe
    )
    for packet in packets[1:]:
        push.feed(packet)
    wait_until(lambda: push.state()["sent"] == len(packets) - first_key)
    assert push.state()["dropped"] == first_key - 1
    push.close()


def test_push_drops_when_link_stalls(stream):
    info, packets = stream
    stalled = Listener(read=False)
    try:
        push = StreamPush(
            f"tcp://127.0.0.1:{stalled.port}", info, queue_packets=8, io_timeout_s=30
        )
        fed = 0
        # Many copies of the stream, more than the socket buffers can take.
        for _ in range(40):
            for packet in packets:
                push.feed(packet)
                fed += 1
        state = push.state()
        assert state["dropped"] > 0
        assert state["sent"] + state["dropped"] + state["queued"] <= fed
        push.close(timeout_s=1.0)
    finally:
        stalled.close()


def test_push_reconnects_without_leaking_key(stream, caplog):
    info, packets = stream
    caplog.set_level(logging.INFO, logger="appliance.studio.push")
    url = f"rtmp://127.0.0.1:{free_port()}/live/streamkey-1234"
    push = StreamPush(url, info, retry_s=0.01, max_retry_s=0.05)
    wait_until(lambda: push.state()["reconnects"] >= 2, feeder(push, packets))
    state = push.state()
    push.close()
    assert state["connected"] is False
    assert state["sent"] == 0
    assert state["dropped"] > 0
    assert "Connection refused" in state["last_error"]
    assert "streamkey-1234" not in state["last_error"]
    assert push.target == url.split("/live")[0]
    assert "push to rtmp://127.0.0.1" in caplog.text
    assert "streamkey-1234" not in caplog.text


def test_push_reaches_listener_started_later(stream):
    info, packets = stream
    port = free_port()
    push = StreamPush(f"tcp://127.0.0.1:{port}", info, retry_s=0.05, max_retry_s=0.1)
    feed = feeder(push, packets)
    try:
        wait_until(lambda: push.state()["reconnects"] >= 1, feed)
        assert push.state()["connected"] is False
        late = Listener(port=port)
        try:
            wait_until(lambda: push.state()["sent"] > 0, feed)
            assert push.state()["connected"] is True
            assert late.connections >= 1
        finally:
            late.close()
    finally:
        push.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/live/key", "rtmp:///live/key", "file:///tmp/out.ts"]
)
def test_push_rejects_invalid_url(stream, url):
    info, _ = stream
    with pytest.raises(ValueError, match="invalid push URL") as raised:
        StreamPush(url, info)
    assert "rtmp://host:port" in str(raised.value)
    assert "key" not in str(raised.value)
