"""HlsWriter: segments, low-latency parts and the playlist, checked with ffprobe."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
from pathlib import Path

import pytest

from appliance.studio import PLAYLIST_NAME, HlsRequestError, HlsWriter
from appliance.studio._mpegts import TS_PACKET_BYTES, crc32_mpeg2
from hardware.camera import EncodedPacket, StreamInfo
from tests.studio.ffprobe import decode_errors, probe, probe_bytes
from tests.studio.packets import stream_packets

FRAME_S = 1 / 15
SEGMENT_S = 2.0
PART_S = 0.5
WINDOW = 4
START_UNIX_S = 1_780_000_000.0


@dataclasses.dataclass(frozen=True)
class Part:
    duration: float
    uri: str
    length: int
    offset: int
    independent: bool


@dataclasses.dataclass
class Entry:
    """One segment of a parsed playlist, with the tags in front of it."""

    uri: str | None = None
    duration: float | None = None
    program_date_time: str | None = None
    discontinuity: bool = False
    parts: list[Part] = dataclasses.field(default_factory=list)


def parse_playlist(text: str) -> tuple[dict[str, str], list[Entry]]:
    """Return the playlist's header tags and its segments, the open one last."""
    tags: dict[str, str] = {}
    entries: list[Entry] = []
    entry = Entry()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    for line in lines[1:]:
        if line.startswith("#EXT-X-PART:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line[12:]))
            length, offset = attrs["BYTERANGE"].strip('"').split("@")
            entry.parts.append(
                Part(
                    float(attrs["DURATION"]),
                    attrs["URI"].strip('"'),
                    int(length),
                    int(offset),
                    attrs.get("INDEPENDENT") == "YES",
                )
            )
        elif line == "#EXT-X-DISCONTINUITY":
            entry.discontinuity = True
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            entry.program_date_time = line.partition(":")[2]
        elif line.startswith("#EXTINF:"):
            entry.duration = float(line[8:].rstrip(","))
        elif not line.startswith("#"):
            entry.uri = line
            entries.append(entry)
            entry = Entry()
        else:
            name, _, value = line.partition(":")
            tags[name] = value
    if entry.parts or entry.program_date_time:
        entries.append(entry)
    return tags, entries


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(14.0)


def make_writer(folder: Path, info: StreamInfo, **changes: object) -> HlsWriter:
    options: dict[str, object] = {
        "segment_s": SEGMENT_S,
        "part_s": PART_S,
        "window": WINDOW,
        "wall_clock": lambda: START_UNIX_S,
    }
    options.update(changes)
    return HlsWriter(folder, info, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fed(stream, tmp_path_factory) -> HlsWriter:
    """A writer fed 13.2 s: six finished segments and one being written."""
    info, packets = stream
    writer = make_writer(tmp_path_factory.mktemp("hls"), info)
    for packet in packets:
        if packet.seconds < 13.2:
            writer.feed(packet)
    return writer


def test_playlist_has_low_latency_tags(fed: HlsWriter):
    text = (fed.folder / PLAYLIST_NAME).read_text()
    assert text == fed.playlist()
    tags, entries = parse_playlist(text)
    assert tags["#EXT-X-VERSION"] == "6"
    # The 2 s segments plus a second of headroom for late key frames.
    assert tags["#EXT-X-TARGETDURATION"] == "3"
    assert tags["#EXT-X-SERVER-CONTROL"] == "CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5"
    assert tags["#EXT-X-PART-INF"] == "PART-TARGET=0.5"
    assert fed.segments_written == 6
    assert tags["#EXT-X-MEDIA-SEQUENCE"] == str(6 - WINDOW)
    assert fed.media_sequence == 6 - WINDOW
    assert tags["#EXT-X-DISCONTINUITY-SEQUENCE"] == "0"
    finished = [e for e in entries if e.duration is not None]
    assert len(finished) == WINDOW
    assert "#EXT-X-ENDLIST" not in text


def test_playlist_dates_follow_media_time(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    # Segment 2 starts 4 s into the stream.
    assert entries[0].program_date_time == "2026-05-28T20:26:44.000Z"
    assert entries[1].program_date_time == "2026-05-28T20:26:46.000Z"
    assert all(e.program_date_time for e in entries)


def test_preload_hint_points_at_open_part(fed: HlsWriter):
    text = fed.playlist()
    _, entries = parse_playlist(text)
    open_entry = entries[-1]
    assert open_entry.duration is None
    last_part = open_entry.parts[-1]
    hint = re.search(
        r'^#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)",BYTERANGE-START=(\d+)$',
        text,
        re.MULTILINE,
    )
    assert hint is not None
    assert hint.group(1) == last_part.uri
    assert int(hint.group(2)) == last_part.offset + last_part.length
    assert fed.live_msn == 6


def test_segment_files_form_bounded_window(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    listed = [e.uri for e in entries if e.duration is not None]
    on_disk = sorted(p.name for p in fed.folder.glob("*.ts"))
    assert on_disk == sorted(listed)
    assert len(on_disk) == WINDOW
    assert sorted(p.name for p in fed.folder.iterdir()) == sorted(
        [*listed, PLAYLIST_NAME]
    )


def test_segments_pass_ffprobe(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    for entry in entries:
        if entry.duration is None or entry.uri is None:
            continue
        path = fed.folder / entry.uri
        assert fed.segment_bytes(entry.uri) == path.read_bytes()
        report = probe(path)
        video = report.packets_of("video")
        audio = report.packets_of("audio")
        assert video[0]["keyframe"], entry.uri
        assert entry.duration == pytest.approx(SEGMENT_S)
        assert report.video_span_s() == pytest.approx(entry.duration, abs=1e-3)
        for packets in (video, audio):
            dts = [p["dts_time"] for p in packets]
            assert dts == sorted(dts), entry.uri
            assert len(set(dts)) == len(dts), entry.uri
        assert audio[0]["pts_time"] >= video[0]["pts_time"] - 0.05
        assert decode_errors(path) == "", entry.uri


def test_segments_continue_one_timeline(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    finished = [e for e in entries if e.duration is not None and e.uri]
    starts = [
        probe(fed.folder / e.uri).packets_of("video")[0]["pts_time"] for e in finished
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps == pytest.approx([SEGMENT_S] * (len(finished) - 1), abs=1e-3)


def test_parts_cover_segments_exactly(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    with_parts = [e for e in entries if e.parts]
    # The last three target durations list their parts.
    assert len(with_parts) >= 3
    for entry in with_parts:
        assert {p.uri for p in entry.parts} == {entry.uri or entry.parts[0].uri}
        offset = 0
        for part in entry.parts:
            assert part.offset == offset
            assert part.length > 0
            assert part.duration <= PART_S
            offset += part.length
        if entry.duration is not None and entry.uri is not None:
            assert offset == len(fed.segment_bytes(entry.uri) or b"")
            total = sum(p.duration for p in entry.parts)
            assert total == pytest.approx(entry.duration, abs=1e-4)
        assert entry.parts[0].independent


def test_parts_hold_their_frames(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    checked = 0
    for entry in entries:
        for part in entry.parts:
            data = fed.segment_bytes(part.uri)
            assert data is not None
            end = part.offset + part.length
            # The segment up to the part's end, so the part's frames are whole.
            report = probe_bytes(data[:end], ".ts", input_format="mpegts")
            video = [
                p for p in report.packets_of("video") if int(p["pos"]) >= part.offset
            ]
            assert video[0]["keyframe"] is part.independent
            assert sum(p["duration_time"] for p in video) == pytest.approx(
                part.duration, abs=1e-3
            )
            checked += 1
    assert checked >= 12


def test_independent_part_plays_alone(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    independent = [p for e in entries for p in e.parts if p.independent]
    assert len(independent) >= 4
    for part in independent:
        data = fed.segment_bytes(part.uri)
        assert data is not None
        piece = data[part.offset : part.offset + part.length]
        report = probe_bytes(piece, ".ts", input_format="mpegts")
        assert report.stream("video")["codec_name"] == "h264"
        assert report.stream("audio")["codec_name"] == "aac"
        assert report.packets_of("video")[0]["keyframe"]


def test_open_segment_bytes_grow_into_final_segment(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 3.0:
            writer.feed(packet)
    _, entries = parse_playlist(writer.playlist())
    name = entries[-1].parts[0].uri
    partial = writer.segment_bytes(name)
    assert partial is not None
    for packet in packets:
        if 3.0 <= packet.seconds < 4.5:
            writer.feed(packet)
    final = writer.segment_bytes(name)
    assert final is not None
    assert final.startswith(partial)
    assert (tmp_path / name).read_bytes() == final
    assert writer.segment_bytes("segment-unknown.ts") is None


def test_discontinuity_starts_new_segment(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 3.0:
            writer.feed(packet)
    writer.discontinuity()
    # The slate's encoder starts again at time 0, 0.3 s into a GOP.
    for packet in packets:
        if 0.3 <= packet.seconds < 5.0:
            writer.feed(packet)
    assert writer.packets_dropped > 0
    writer.close()
    tags, entries = parse_playlist(writer.playlist())
    assert [e.discontinuity for e in entries] == [False, False, True, False]
    assert [e.duration for e in entries] == pytest.approx([2.0, 1.0, 2.0, 2.0])
    assert tags["#EXT-X-DISCONTINUITY-SEQUENCE"] == "0"
    after = entries[2]
    assert after.uri is not None
    report = probe(tmp_path / after.uri)
    assert report.packets_of("video")[0]["keyframe"]
    assert report.packets_of("video")[0]["pts_time"] == pytest.approx(1.1)
    assert decode_errors(tmp_path / after.uri) == ""


def test_discontinuity_sequence_counts_removed_tags(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info, window=3)
    head = [p for p in packets if p.seconds < 2.0]
    writer.discontinuity()
    for packet in head:
        writer.feed(packet)
    writer.discontinuity()
    for packet in packets:
        if packet.seconds < 10.0:
            writer.feed(packet)
    writer.close()
    tags, entries = parse_playlist(writer.playlist())
    assert tags["#EXT-X-DISCONTINUITY-SEQUENCE"] == "2"
    assert not any(e.discontinuity for e in entries)


def test_close_ends_playlist(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 5.0:
            writer.feed(packet)
    writer.close()
    text = (tmp_path / PLAYLIST_NAME).read_text()
    _tags, entries = parse_playlist(text)
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "#EXT-X-PRELOAD-HINT" not in text
    assert [e.duration for e in entries] == pytest.approx([2.0, 2.0, 1.0])
    assert writer.segments_written == 3
    with pytest.raises(RuntimeError, match="closed"):
        writer.feed(packets[0])


def test_end_finishes_playlist_and_new_run_goes_on(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 5.2:
            writer.feed(packet)
    writer.end()
    ended = (tmp_path / PLAYLIST_NAME).read_text()
    _tags, ended_entries = parse_playlist(ended)
    last = ended_entries[-1]
    stopped = (writer.ended, writer.closed)
    # A run after a stop, later on the same timeline.
    for packet in packets:
        if 7.0 <= packet.seconds < 9.2:
            writer.feed(packet)
    resumed = writer.playlist()
    tags, entries = parse_playlist(resumed)
    first_new = entries[len(ended_entries)]

    assert ended.endswith("#EXT-X-ENDLIST\n")
    assert "#EXT-X-PRELOAD-HINT" not in ended
    assert [e.duration for e in ended_entries] == pytest.approx([2.0, 2.0, 1.2])
    assert last.uri is not None
    assert decode_errors(tmp_path / last.uri) == ""
    assert stopped == (True, False)
    assert "#EXT-X-ENDLIST" not in resumed
    assert "#EXT-X-PRELOAD-HINT" in resumed
    assert tags["#EXT-X-MEDIA-SEQUENCE"] == "0"
    assert tags["#EXT-X-DISCONTINUITY-SEQUENCE"] == "0"
    assert [e.discontinuity for e in entries[: len(ended_entries) + 1]] == [
        False,
        False,
        False,
        True,
    ]
    assert first_new.uri is not None
    assert first_new.uri.endswith("-000003.ts")
    assert decode_errors(tmp_path / first_new.uri) == ""
    assert not writer.ended


def test_failed_playlist_write_keeps_stream_in_memory(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    # A folder in the playlist's place makes every playlist write fail.
    (tmp_path / PLAYLIST_NAME).mkdir()
    for packet in packets:
        if packet.seconds < 4.5:
            writer.feed(packet)
    assert writer.write_errors > 0
    assert writer.segments_written == 2
    _, entries = parse_playlist(writer.playlist())
    assert entries[0].uri is not None
    assert writer.segment_bytes(entries[0].uri) is not None


def test_writer_removes_stale_segments(stream, tmp_path: Path):
    info, _ = stream
    stale = tmp_path / "segment-abcdef-000001.ts"
    stale.write_bytes(b"old")
    keep = tmp_path / "notes.txt"
    keep.write_text("kept")
    make_writer(tmp_path, info)
    assert not stale.exists()
    assert keep.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"segment_s": 0}, "invalid HLS segment length 0"),
        ({"part_s": 3.0}, "invalid HLS part length 3.0"),
        ({"part_s": -1}, "invalid HLS part length -1"),
        ({"window": 2}, "invalid HLS window 2"),
        ({"keyframe_interval_s": 0}, "invalid key frame interval 0"),
    ],
)
def test_writer_rejects_invalid_settings(stream, tmp_path: Path, changes, message):
    info, _ = stream
    with pytest.raises(ValueError, match=message):
        make_writer(tmp_path, info, **changes)


async def test_wait_for_returns_when_part_appears(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    head = [p for p in packets if p.seconds < 2.2]
    tail = [p for p in packets if 2.2 <= p.seconds < 5.0]
    for packet in head:
        writer.feed(packet)
    assert writer.has(0)
    assert not writer.has(1, 1)
    waiter = asyncio.create_task(writer.wait_for(1, 1, 30.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    for packet in tail:
        writer.feed(packet)
        await asyncio.sleep(0)
    assert await waiter is True
    assert writer.has(1, 1)
    assert await writer.wait_for(0, None, 30.0) is True


async def test_wait_for_times_out(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets[:50]:
        writer.feed(packet)
    assert await writer.wait_for(1, None, 0.05) is False


async def test_wait_for_rejects_far_future_segment(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets[:50]:
        writer.feed(packet)
    with pytest.raises(HlsRequestError, match="_HLS_msn=2 is more than 2"):
        await writer.wait_for(2, None, 1.0)
    with pytest.raises(HlsRequestError, match="_HLS_part=-1"):
        await writer.wait_for(0, -1, 1.0)


async def test_wait_for_ends_when_writer_closes(stream, tmp_path: Path):
    info, packets = stream
    writer = make_writer(tmp_path, info)
    for packet in packets[:50]:
        writer.feed(packet)
    waiter = asyncio.create_task(writer.wait_for(1, 0, 30.0))
    await asyncio.sleep(0)
    writer.close()
    assert await waiter is False


def test_crc32_mpeg2_check_value():
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7


def test_segments_are_whole_transport_packets(fed: HlsWriter):
    _, entries = parse_playlist(fed.playlist())
    names = [e.uri for e in entries if e.duration is not None and e.uri]
    stream = b"".join(fed.segment_bytes(name) or b"" for name in names)
    assert len(stream) % TS_PACKET_BYTES == 0
    counters: dict[int, int] = {}
    for offset in range(0, len(stream), TS_PACKET_BYTES):
        packet = stream[offset : offset + TS_PACKET_BYTES]
        assert packet[0] == 0x47
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        counter = packet[3] & 0x0F
        # Consecutive segments continue each PID's continuity counter.
        if pid in counters:
            assert counter == (counters[pid] + 1) & 0x0F, offset
        counters[pid] = counter
    assert set(counters) == {0x0000, 0x1000, 0x0100, 0x0101}
