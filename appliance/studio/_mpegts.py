"""A small MPEG-TS muxer for H.264 and AAC, written for HLS segments and parts.

Every call returns the transport packets of one access unit at once, so
the HLS writer gets the byte offset of each frame and can cut segments
and partial segments exactly at frame boundaries. The muxer keeps its
continuity counters across segments, writes the PAT and PMT before every
video key frame (so every part that starts on one is independent) and
sends the PCR on the video PID.
"""

from __future__ import annotations

from fractions import Fraction

from appliance.studio._aac import AdtsFramer
from hardware.camera import EncodedPacket, StreamInfo

TS_PACKET_BYTES = 188
_PAYLOAD_BYTES = TS_PACKET_BYTES - 4
_SYNC_BYTE = 0x47
_PAT_PID = 0x0000
_PMT_PID = 0x1000
_VIDEO_PID = 0x0100
_AUDIO_PID = 0x0101
_PROGRAM_NUMBER = 1
# ISO/IEC 13818-1, Table 2-34: stream_type values.
_STREAM_TYPE_H264 = 0x1B
_STREAM_TYPE_AAC_ADTS = 0x0F
_STREAM_ID_VIDEO = 0xE0
_STREAM_ID_AUDIO = 0xC0
_TIMESTAMP_MASK = (1 << 33) - 1
_CLOCK_HZ = 90_000
# Timestamps run this far ahead of the PCR, the decoder's buffering time.
_DECODE_DELAY_TICKS = 9_000
# An H.264 access unit delimiter (primary_pic_type 7: any slice type),
# which Apple's HLS authoring rules ask for in front of every frame.
_ACCESS_UNIT_DELIMITER = b"\x00\x00\x00\x01\x09\xf0"
_NAL_TYPE_AUD = 9


def _crc32_mpeg2_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc32_mpeg2_table()


def crc32_mpeg2(data: bytes) -> int:
    """Return the CRC-32/MPEG-2 of ``data`` (PSI sections end with it)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _timestamp_field(prefix: int, ticks: int) -> bytes:
    ticks &= _TIMESTAMP_MASK
    return bytes(
        (
            (prefix << 4) | (((ticks >> 30) & 0x07) << 1) | 1,
            (ticks >> 22) & 0xFF,
            (((ticks >> 15) & 0x7F) << 1) | 1,
            (ticks >> 7) & 0xFF,
            ((ticks & 0x7F) << 1) | 1,
        )
    )


def _pcr_field(ticks: int) -> bytes:
    base = ticks & _TIMESTAMP_MASK
    return bytes(
        (
            (base >> 25) & 0xFF,
            (base >> 17) & 0xFF,
            (base >> 9) & 0xFF,
            (base >> 1) & 0xFF,
            # Low bit of the base, six reserved bits, extension 0.
            ((base & 1) << 7) | 0x7E,
            0x00,
        )
    )


def _ticks(value: int, time_base: Fraction) -> int:
    return round(value * time_base * _CLOCK_HZ)


class TsMuxer:
    """Turns EncodedPackets into MPEG-TS packets, one access unit per call."""

    def __init__(self, info: StreamInfo) -> None:
        self.info = info
        self._framer = (
            AdtsFramer.from_config(info.audio.extradata) if info.audio else None
        )
        self._continuity: dict[int, int] = {}

    def tables(self) -> bytes:
        """Return a PAT and a PMT, each in one transport packet."""
        pat = bytes(
            (
                0x00, 0x01,  # transport_stream_id
                0xC1, 0x00, 0x00,  # version 0, current; section 0 of 0
                0x00, _PROGRAM_NUMBER,
                0xE0 | (_PMT_PID >> 8), _PMT_PID & 0xFF,
            )
        )  # fmt: skip
        streams = [(_STREAM_TYPE_H264, _VIDEO_PID)]
        if self._framer is not None:
            streams.append((_STREAM_TYPE_AAC_ADTS, _AUDIO_PID))
        pmt = bytes(
            (
                0x00, _PROGRAM_NUMBER,
                0xC1, 0x00, 0x00,
                0xE0 | (_VIDEO_PID >> 8), _VIDEO_PID & 0xFF,  # PCR PID
                0xF0, 0x00,  # no program descriptors
            )
        )  # fmt: skip
        for stream_type, pid in streams:
            pmt += bytes((stream_type, 0xE0 | (pid >> 8), pid & 0xFF, 0xF0, 0x00))
        return self._section(_PAT_PID, 0x00, pat) + self._section(_PMT_PID, 0x02, pmt)

    def _section(self, pid: int, table_id: int, body: bytes) -> bytes:
        length = len(body) + 4
        section = bytes((table_id, 0xB0 | (length >> 8), length & 0xFF)) + body
        section += crc32_mpeg2(section).to_bytes(4, "big")
        payload = b"\x00" + section  # pointer_field: the section starts at once
        return self._packetize(pid, payload, pcr=None, random_access=False)

    def mux(self, packet: EncodedPacket) -> bytes:
        """Return the transport packets of one video or audio access unit.

        A video key frame comes with the PAT and PMT in front of it.
        """
        pts = _ticks(packet.pts, packet.time_base) + _DECODE_DELAY_TICKS
        dts = _ticks(packet.dts, packet.time_base) + _DECODE_DELAY_TICKS
        if packet.kind == "audio":
            if self._framer is None:
                return b""
            frame = self._framer.frame(packet.data)
            header = bytes((0x80, 0x80, 5)) + _timestamp_field(0x2, pts)
            pes = (
                b"\x00\x00\x01"
                + bytes((_STREAM_ID_AUDIO,))
                + (len(header) + len(frame)).to_bytes(2, "big")
                + header
                + frame
            )
            return self._packetize(_AUDIO_PID, pes, pcr=None, random_access=False)
        data = packet.data
        if not _starts_with_delimiter(data):
            data = _ACCESS_UNIT_DELIMITER + data
        if pts == dts:
            header = bytes((0x84, 0x80, 5)) + _timestamp_field(0x2, pts)
        else:
            header = (
                bytes((0x84, 0xC0, 10))
                + _timestamp_field(0x3, pts)
                + _timestamp_field(0x1, dts)
            )
        # A video PES may leave its length 0 (unbounded) in a transport stream.
        pes = b"\x00\x00\x01" + bytes((_STREAM_ID_VIDEO, 0, 0)) + header + data
        body = self._packetize(
            _VIDEO_PID,
            pes,
            pcr=dts - _DECODE_DELAY_TICKS,
            random_access=packet.keyframe,
        )
        return self.tables() + body if packet.keyframe else body

    def _packetize(
        self, pid: int, payload: bytes, *, pcr: int | None, random_access: bool
    ) -> bytes:
        out = bytearray()
        position = 0
        first = True
        while position < len(payload):
            adaptation: bytearray | None = None
            if first and (pcr is not None or random_access):
                flags = (0x40 if random_access else 0) | (
                    0x10 if pcr is not None else 0
                )
                adaptation = bytearray((flags,))
                if pcr is not None:
                    adaptation += _pcr_field(pcr)
            adaptation_bytes = 0 if adaptation is None else 1 + len(adaptation)
            room = _PAYLOAD_BYTES - adaptation_bytes
            remaining = len(payload) - position
            if remaining < room:
                # The last packet is filled up with adaptation field stuffing.
                stuffing = room - remaining
                if adaptation is None:
                    adaptation = bytearray()
                    if stuffing > 1:
                        adaptation.append(0x00)
                        adaptation += b"\xff" * (stuffing - 2)
                else:
                    adaptation += b"\xff" * stuffing
                room = remaining
            counter = self._continuity.get(pid, 0)
            self._continuity[pid] = (counter + 1) & 0x0F
            control = 0x30 if adaptation is not None else 0x10
            out += bytes(
                (
                    _SYNC_BYTE,
                    (0x40 if first else 0x00) | (pid >> 8),
                    pid & 0xFF,
                    control | counter,
                )
            )
            if adaptation is not None:
                out.append(len(adaptation))
                out += adaptation
            out += payload[position : position + room]
            position += room
            first = False
        return bytes(out)


def _starts_with_delimiter(data: bytes) -> bool:
    for start_code in (b"\x00\x00\x00\x01", b"\x00\x00\x01"):
        if data.startswith(start_code) and len(data) > len(start_code):
            return data[len(start_code)] & 0x1F == _NAL_TYPE_AUD
    return False
