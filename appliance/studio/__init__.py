"""The creator studio: the camera's stream served as HLS, pushed out, and clipped.

This package contains the media side. ``PacketRing`` keeps the last seconds
of encoded packets, and ``write_clip`` remuxes a snapshot of them into an
MP4 clip. ``HlsWriter`` cuts the stream into low-latency HLS segments, and
``StreamPush`` sends it to an RTMP, SRT or MPEG-TS ingest.
"""

from appliance.studio.clips import ClipError, ClipFile, write_clip
from appliance.studio.hls import PLAYLIST_NAME, HlsError, HlsRequestError, HlsWriter
from appliance.studio.push import StreamPush
from appliance.studio.ring import PacketRing

__all__ = [
    "PLAYLIST_NAME",
    "ClipError",
    "ClipFile",
    "HlsError",
    "HlsRequestError",
    "HlsWriter",
    "PacketRing",
    "StreamPush",
    "write_clip",
]
