"""The ``[studio]`` table of the site configuration: the camera and its stream.

Without the table the box runs no studio. Every value is checked here, so a
typing error stops ``nightbox run`` with the key, the value and the fix
instead of surfacing as an encoder error in the middle of a night.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from appliance._toml_values import (
    boolean,
    choice,
    integer,
    listen_host,
    number,
    reject_unknown,
    string,
    table,
)
from appliance.errors import ConfigError

CameraBackend = Literal["simulator", "picamera2"]

STUDIO_KEYS = {
    "camera",
    "width",
    "height",
    "fps",
    "bitrate_kbps",
    "keyframe_interval_s",
    "preset",
    "audio",
    "clip_seconds",
    "clips_keep",
    "segment_s",
    "part_s",
    "hls_window",
    "http_host",
    "http_port",
    "push_url",
    "button_pin",
    "clip_on_set_end",
    "slate_after_s",
}
# libx264's speed presets, fastest first.
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
PUSH_SCHEMES = ("rtmp", "rtmps", "srt", "tcp", "udp")
# Ports suggested in messages: the usual RTMP and RTMPS ports, any for the rest.
_EXAMPLE_PORTS = {"rtmp": 1935, "rtmps": 443}
# The Raspberry Pi's H.264 encoder and its camera modes stop at 1080p.
MAX_WIDTH = 1920
MAX_HEIGHT = 1080
# GPIO 0-27 are the BCM numbers on the Raspberry Pi's 40-pin header.
MAX_BCM_PIN = 27
_ALSA_DEVICE = re.compile(r"^[A-Za-z0-9_:,.=-]{1,64}\Z")
# Binding fails with these when http_host is not an address of this machine
# or a name that does not resolve (the EAI_* codes of getaddrinfo).
_HOST_ERRNOS = frozenset(
    {errno.EADDRNOTAVAIL, socket.EAI_NONAME, socket.EAI_AGAIN, socket.EAI_FAIL}
)


@dataclass(frozen=True, slots=True)
class StudioConfig:
    """The studio's camera, encoder, HLS, clip and HTTP settings.

    Sizes are pixels, rates frames per second, bitrates kbit/s and every
    ``_s`` value seconds. ``clip_seconds`` is the length of the rolling
    buffer that clips are cut from. ``clips_keep`` is the number of uploaded
    clip files kept on disk, counted apart for set-end clips and for the
    rest. Clips waiting for their upload stay on disk too, and at most twice
    ``clips_keep`` of the rest may wait. ``http_port`` 0 picks a free port at
    start.
    """

    camera: CameraBackend = "simulator"
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 2500
    keyframe_interval_s: float = 1.0
    preset: str = "veryfast"
    audio: str = "none"
    clip_seconds: float = 30.0
    clips_keep: int = 50
    segment_s: float = 2.0
    part_s: float = 0.5
    hls_window: int = 6
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    push_url: str | None = None
    button_pin: int | None = None
    clip_on_set_end: bool = True
    slate_after_s: float = 2.0


def parse_studio(raw: dict[str, Any]) -> StudioConfig | None:
    """Return the ``[studio]`` table, or None when the site has no studio.

    Raises ConfigError naming the key, the value and what is accepted.
    """
    if "studio" not in raw:
        return None
    section = table(raw, "studio")
    reject_unknown(section, "studio", STUDIO_KEYS)
    defaults = StudioConfig()
    if "camera" not in section:
        raise ConfigError(
            "missing studio.camera; set it to 'simulator' (a test card) or "
            "'picamera2' (a Raspberry Pi camera), or remove the [studio] table"
        )
    camera = choice(section, "studio.camera", ("simulator", "picamera2"), None)
    width = _even(section, "studio.width", defaults.width, 160, MAX_WIDTH)
    height = _even(section, "studio.height", defaults.height, 90, MAX_HEIGHT)
    fps = integer(section, "studio.fps", defaults.fps, minimum=1, maximum=60)
    keyframe_interval_s = number(
        section, "studio.keyframe_interval_s", defaults.keyframe_interval_s, 0.1, 10.0
    )
    segment_s = number(section, "studio.segment_s", defaults.segment_s, 0.5, 10.0)
    part_s = number(section, "studio.part_s", defaults.part_s, 0.1, 5.0)
    clip_seconds = number(
        section, "studio.clip_seconds", defaults.clip_seconds, 2.0, 600.0
    )
    _check_timing(keyframe_interval_s, segment_s, part_s, clip_seconds)
    return StudioConfig(
        camera=camera,
        width=width,
        height=height,
        fps=fps,
        bitrate_kbps=integer(
            section,
            "studio.bitrate_kbps",
            defaults.bitrate_kbps,
            minimum=100,
            maximum=20_000,
        ),
        keyframe_interval_s=keyframe_interval_s,
        preset=choice(section, "studio.preset", X264_PRESETS, defaults.preset),
        audio=_audio(section, camera),
        clip_seconds=clip_seconds,
        clips_keep=integer(
            section, "studio.clips_keep", defaults.clips_keep, minimum=1, maximum=10_000
        ),
        segment_s=segment_s,
        part_s=part_s,
        hls_window=integer(
            section, "studio.hls_window", defaults.hls_window, minimum=3, maximum=60
        ),
        http_host=listen_host(section, "studio.http_host", default="127.0.0.1"),
        http_port=integer(
            section, "studio.http_port", defaults.http_port, minimum=0, maximum=65535
        ),
        push_url=_push_url(section),
        button_pin=_button_pin(section),
        clip_on_set_end=boolean(
            section, "studio.clip_on_set_end", defaults.clip_on_set_end
        ),
        slate_after_s=number(
            section, "studio.slate_after_s", defaults.slate_after_s, 0.5, 60.0
        ),
    )


def _even(
    section: dict[str, Any], key: str, default: int, minimum: int, maximum: int
) -> int:
    value = integer(section, key, default, minimum=minimum, maximum=maximum)
    if value % 2:
        # H.264 in 4:2:0 halves both dimensions for the chroma planes.
        raise ConfigError(
            f"{key} = {value} is odd; H.264 video needs an even size, such as "
            f"{value - 1} or {value + 1}"
        )
    return value


def _check_timing(
    keyframe_interval_s: float, segment_s: float, part_s: float, clip_seconds: float
) -> None:
    if keyframe_interval_s > segment_s:
        # Segments start at key frames, so a longer key frame interval
        # stretches every segment beyond segment_s.
        raise ConfigError(
            f"studio.keyframe_interval_s = {keyframe_interval_s} is longer than "
            f"studio.segment_s = {segment_s}; HLS segments start at key frames, so "
            "lower the interval or raise segment_s"
        )
    if part_s > segment_s:
        raise ConfigError(
            f"studio.part_s = {part_s} is longer than studio.segment_s = "
            f"{segment_s}; a low-latency part is a piece of a segment, so lower it"
        )
    if clip_seconds < 2 * keyframe_interval_s:
        raise ConfigError(
            f"studio.clip_seconds = {clip_seconds} contains fewer than two key frame "
            f"intervals ({keyframe_interval_s} s each); clips start at a key "
            "frame, so raise clip_seconds or lower keyframe_interval_s"
        )


def _audio(section: dict[str, Any], camera: str) -> str:
    value = string(section, "studio.audio", default="none")
    if value in ("none", "tone"):
        return value
    device = value.removeprefix("alsa:")
    if value.startswith("alsa:") and _ALSA_DEVICE.match(device):
        if camera == "simulator":
            raise ConfigError(
                f"studio.audio = {value!r:.80} needs a real camera; the simulator "
                "has 'tone' or 'none', so use one of those or set camera = "
                "'picamera2'"
            )
        return value
    raise ConfigError(
        f"studio.audio = {value!r:.80} is invalid; use 'none', 'tone' (a test "
        "tone) or 'alsa:<device>' with an ALSA device such as 'alsa:hw:1,0'"
    )


def _push_url(section: dict[str, Any]) -> str | None:
    if "push_url" not in section:
        return None
    value = string(section, "studio.push_url")
    # The URL may carry a stream key, so messages show its scheme and host only.
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in PUSH_SCHEMES or not parts.hostname:
        scheme = value.split("://", 1)[0] if "://" in value else "no scheme"
        raise ConfigError(
            f"studio.push_url (scheme {scheme!r:.20}) is invalid; use "
            f"{', '.join(f'{s}://' for s in PUSH_SCHEMES)} followed by a host, "
            "such as rtmp://live.example.com/app/<stream key>"
        )
    target = f"{parts.scheme}://{parts.hostname}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(
            f"studio.push_url ({target}) has the invalid port {port_text!r:.20}; "
            "use a number from 1 to 65535, such as "
            f"{target}:{_EXAMPLE_PORTS.get(parts.scheme, 9000)}"
        )
    if parts.scheme in ("srt", "tcp", "udp") and port is None:
        raise ConfigError(
            f"studio.push_url ({target}) has no port; "
            f"{parts.scheme} needs one, such as {parts.scheme}://host:9000"
        )
    return value


def listen_failure_advice(error_number: int | None) -> str:
    """Return what to change in ``[studio]`` when the stream's address cannot be bound.

    ``error_number`` is the ``errno`` of the OSError raised by the bind or
    by the name lookup before it.
    """
    if error_number in _HOST_ERRNOS:
        return (
            "set [studio] http_host to 0.0.0.0 (every network of the box), "
            "127.0.0.1 (this machine only) or one of the box's own addresses"
        )
    if error_number == errno.EACCES:
        return (
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability, "
            "so set [studio] http_port to 1024 or above, or 0 to pick a free port"
        )
    return "set [studio] http_port to a free port, or 0 to pick one"


def _button_pin(section: dict[str, Any]) -> int | None:
    if "button_pin" not in section:
        return None
    return integer(section, "studio.button_pin", None, minimum=0, maximum=MAX_BCM_PIN)
