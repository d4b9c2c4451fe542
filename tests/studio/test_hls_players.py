"""Players built on Debian's FFmpeg 5.1 open the live playlist straight away.

libavformat 5.1 learns the codecs of an HLS stream from the segments'
program tables. Without a program it could read, it guessed the codecs
from the data and read at live pace until its probe size ran out, about a
minute before the first picture.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator

import pytest

from appliance.studio import PLAYLIST_NAME, HlsWriter
from appliance.studio._mpegts import TS_PACKET_BYTES, TsMuxer
from tests.studio.ffprobe import FFPROBE
from tests.studio.packets import stream_packets

# Far longer than ffprobe needs; a player that waits for more segments of
# a playlist that no longer grows runs into it instead.
OPEN_TIMEOUT_S = 30


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output free of access lines."""


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live playlist of 10 s, not ended, served from its folder on loopback."""
    folder = tmp_path_factory.mktemp("live")
    info, packets = stream_packets(14.0)
    writer = HlsWriter(folder, info, segment_s=2.0, part_s=0.5, window=6)
    for packet in packets:
        if packet.seconds < 11.0:
            writer.feed(packet)
    assert "#EXT-X-ENDLIST" not in writer.playlist()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{PLAYLIST_NAME}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_ffprobe_5_opens_live_playlist(live_url: str):
    command = [FFPROBE, "-v", "error", "-show_entries", "stream=codec_name,width"]
    command += ["-of", "csv=p=0", live_url]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=OPEN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{FFPROBE} did not find the codecs of the live playlist within "
            f"{OPEN_TIMEOUT_S} s"
        )
    assert result.returncode == 0, result.stderr
    assert sorted(set(result.stdout.split())) == ["aac", "h264,320"]


def test_program_association_table_points_at_program_map():
    info, _ = stream_packets(14.0)
    pat = TsMuxer(info).tables()[:TS_PACKET_BYTES]
    # Header, stuffing in the adaptation field, pointer field, then the
    # section (ISO/IEC 13818-1, 2.4.3.2 and 2.4.4.3).
    assert pat[3] & 0x30 == 0x30
    payload = pat[5 + pat[4] :]
    section = payload[1 + payload[0] :]
    section_length = ((section[1] & 0x0F) << 8) | section[2]
    programs = section[8 : 3 + section_length - 4]
    assert section[0] == 0x00
    assert section_length == 13
    assert len(programs) == 4
    program_number = int.from_bytes(programs[:2], "big")
    pmt_pid = int.from_bytes(programs[2:], "big") & 0x1FFF
    pmt = TsMuxer(info).tables()[TS_PACKET_BYTES:]
    pmt_header_pid = int.from_bytes(pmt[1:3], "big") & 0x1FFF
    assert (program_number, pmt_pid) == (1, pmt_header_pid)
