"""Checks of the studio: the camera's encode, the HLS stream over HTTP, a clip.

They use the box's own interfaces. The studio's state comes from the box's
retained status, which must change while it is sampled. The stream comes
from the studio's HTTP server, with an edge token that the rehearsal
issues itself and revokes afterwards. The check waits, with a blocking
playlist reload, for a segment finished after its request, so a stopped
or stalled stream fails even though its last segments are still served.
A clip is written through the HTTP control endpoint and read back with
ffprobe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

import aiohttp

from appliance.rehearse import _ffprobe
from appliance.rehearse._checks import Context, Outcome, failed, passed
from appliance.rehearse._edge_checks import wait_for_box_status
from appliance.studio._http_playlist import (
    BLOCK_TARGET_DURATIONS,
    playlist_ended,
    playlist_position,
)

# The camera must deliver at least this share of its configured rate.
MIN_FPS_SHARE = 0.9
# Samples of the studio's measured rate, one every _SAMPLE_INTERVAL_S. They
# span three seconds, in which the box publishes its status about three times.
_SAMPLES = 7
_SAMPLE_INTERVAL_S = 0.5
_HTTP_TIMEOUT_S = 10.0
_TOKEN_TTL_S = 300.0
# The terminal id that the rehearsal's stream tokens are issued to.
TOKEN_SUBJECT = "rehearsal"
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _studio_config(context: Context) -> Any:
    return getattr(context.target.config, "studio", None)


def _no_studio() -> Outcome:
    return Outcome(
        True,
        "no [studio] table: the box runs no camera or stream tonight",
        {"studio": False},
        required=False,
    )


async def studio_state(context: Context) -> dict[str, Any] | None:
    """Return the studio's state from the box's status, or None without one."""
    status = await wait_for_box_status(context)
    stream = None if status is None else status.get("stream")
    return stream if isinstance(stream, dict) else None


async def check_camera(context: Context) -> Outcome:
    """Sample the camera's measured frame rate against the configured one."""
    studio = _studio_config(context)
    if studio is None:
        return _no_studio()
    wanted = float(studio.fps) * MIN_FPS_SHARE
    states: list[dict[str, Any]] = []
    box_times: list[object] = []
    for sample in range(_SAMPLES):
        if sample:
            await asyncio.sleep(_SAMPLE_INTERVAL_S)
        status = await wait_for_box_status(context)
        state = None if status is None else status.get("stream")
        if status is None or not isinstance(state, dict):
            return failed(
                "the site has a [studio] table but the box reports no studio; "
                "restart the box with this site file"
            )
        states.append(state)
        box_times.append(status.get("now"))
    state = states[-1]
    samples = [float(sample.get("fps") or 0.0) for sample in states]
    sources = [str(sample.get("source")) for sample in states]
    measured = statistics.median(samples)
    facts = {
        "configured_fps": studio.fps,
        "measured_fps": round(measured, 2),
        "samples": samples,
        "width": studio.width,
        "height": studio.height,
        "camera": studio.camera,
        "dropped_frames": state.get("dropped_frames"),
        "encoder_latency_ms": state.get("encoder_latency_ms"),
    }
    sampled_s = (_SAMPLES - 1) * _SAMPLE_INTERVAL_S
    if len(set(box_times)) == 1:
        return failed(
            f"the box's status did not change in {sampled_s:g} s (its time stays "
            f"at {box_times[0]}), so the studio's state in it is old; the box "
            "stopped publishing its status: check the box's log and restart it",
            **facts,
        )
    if state.get("running") is not True:
        return failed(
            "the studio is not running; start it from the console's stream screen",
            **facts,
        )
    if any(source != "camera" for source in sources):
        reason = state.get("last_error") or "no error reported"
        return failed(
            f"the {studio.camera} camera is down and the stream shows "
            f"{state.get('source') or 'nothing'} ({reason}); check the camera's "
            "cable and restart the box",
            **facts,
        )
    if measured < wanted:
        return failed(
            f"the camera encodes {measured:.1f} fps at {studio.width}x"
            f"{studio.height}, below {wanted:.1f} ({MIN_FPS_SHARE:.0%} of "
            f"{studio.fps}); lower studio.fps, studio.width/height or use a faster "
            "studio.preset",
            **facts,
        )
    return passed(
        f"{studio.camera} camera encodes {measured:.1f} fps (configured "
        f"{studio.fps}) at the configured {studio.width}x{studio.height}",
        **facts,
    )


async def studio_url(context: Context) -> str | None:
    """Return the base URL of the studio's HTTP server, or None when unknown.

    The port comes from the studio's state when it reports one, because
    ``studio.http_port = 0`` picks a free port at every start.
    """
    if context.target.studio_url is not None:
        return context.target.studio_url
    studio = _studio_config(context)
    if studio is None:
        return None
    state = await studio_state(context)
    port = None if state is None else state.get("http_port")
    if not isinstance(port, int) or not port:
        port = studio.http_port
    if not port:
        return None
    host = _WILDCARD_HOSTS.get(studio.http_host, studio.http_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _last_segment(playlist: str) -> str | None:
    lines = [line.strip() for line in playlist.splitlines()]
    segments = [line for line in lines if line and not line.startswith("#")]
    return segments[-1] if segments else None


async def _fetch_segment(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str]
) -> tuple[str, bytes]:
    """Return the name and bytes of a segment finished after this call began.

    A blocking playlist reload requests the segment after the playlist's
    last one, so the segment proves that the stream is live. Raises
    _StreamNotLive when the playlist ends (the stream is stopped) or the
    segment does not come (the stream is stalled).
    """
    url = f"{base}/stream/live.m3u8"
    text = await _playlist(session, url, headers, _HTTP_TIMEOUT_S)
    position = playlist_position(text)
    wait_s = BLOCK_TARGET_DURATIONS * position.target_duration_s
    if not playlist_ended(text):
        try:
            text = await _playlist(
                session,
                f"{url}?_HLS_msn={position.open_msn}",
                headers,
                wait_s + _HTTP_TIMEOUT_S,
            )
        except _HttpRefusal as err:
            if err.status != 503:
                raise
            raise _StreamNotLive(
                f"no new segment after segment {position.open_msn - 1} within "
                f"{wait_s:g} s ({err}): the stream is stalled; check the camera "
                "and the box's log"
            ) from err
    name = _last_segment(text)
    if playlist_ended(text):
        raise _StreamNotLive(
            f"the stream is stopped: its playlist ends (EXT-X-ENDLIST) after "
            f"{name or 'no segment'}; start it from the console's stream screen "
            "or a creator station"
        )
    if name is None:
        raise _StreamNotLive(
            f"the playlist lists no segment after a wait of {wait_s:g} s; check "
            "the camera and the box's log"
        )
    async with session.get(f"{base}/stream/{name}", headers=headers) as reply:
        body = await reply.read()
        if reply.status != 200:
            raise _HttpRefusal(reply.status, body.decode("utf-8", "replace"))
    # Only the file name is kept, so a crafted URI cannot leave the scratch folder.
    return Path(name.split("?")[0]).name, body


async def _playlist(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], wait_s: float
) -> str:
    """Return the playlist at ``url``; raise _HttpRefusal for an error status."""
    timeout = aiohttp.ClientTimeout(total=wait_s)
    async with session.get(url, headers=headers, timeout=timeout) as reply:
        text = await reply.text()
        if reply.status != 200:
            raise _HttpRefusal(reply.status, text)
    return text


class _StreamNotLive(Exception):
    """A stopped or stalled stream, with the reason and the fix in its message."""


class _HttpRefusal(Exception):
    """An error status from the studio's HTTP server."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S))


async def check_hls(context: Context) -> Outcome:
    """Fetch a segment with a ``stream:view`` token and read it with ffprobe."""
    studio = _studio_config(context)
    if studio is None:
        return _no_studio()
    base = await studio_url(context)
    if base is None:
        return failed(
            "the studio reports no HTTP port; check that its HTTP server started "
            "in the box's log"
        )
    facts: dict[str, Any] = {"url": f"{base}/stream/live.m3u8"}
    try:
        name, body, after_revoke = await _fetch_and_revoke(context, base)
    except _HttpRefusal as err:
        return failed(f"the studio rejected the stream request: {err}", **facts)
    except _StreamNotLive as err:
        return failed(str(err), **facts)
    except aiohttp.ClientError as err:
        return failed(
            f"cannot fetch {base}/stream/live.m3u8: {err}; check that the studio's "
            "HTTP server runs",
            **facts,
        )
    facts |= {"segment": name, "bytes": len(body), "status_after_revoke": after_revoke}

    path = context.scratch / name
    path.write_bytes(body)
    probe = await _ffprobe.probe(path)
    video = probe.video
    if video is None:
        return failed(f"segment {name} contains no video stream", **facts)
    size = (video.get("width"), video.get("height"))
    facts |= {"codec": video.get("codec_name"), "width": size[0], "height": size[1]}
    facts["duration_s"] = probe.duration_s

    problem = probe.timestamp_problem()
    if problem is not None:
        return failed(f"segment {name} is not playable: {problem}", **facts)
    if size != (studio.width, studio.height):
        return failed(
            f"segment {name} is {size[0]}x{size[1]}, not the configured "
            f"{studio.width}x{studio.height}",
            **facts,
        )
    if after_revoke != 401:
        return failed(
            f"the studio returned HTTP {after_revoke} for a revoked token, not 401, "
            "so anyone with an old link could watch",
            **facts,
        )
    return passed(
        f"segment {name} ({len(body)} bytes, {probe.duration_s:.1f} s of "
        f"{video.get('codec_name')} {studio.width}x{studio.height}) fetched over "
        "HTTP with a stream:view token and read by ffprobe; the revoked token "
        "gets 401",
        **facts,
    )


async def _fetch_and_revoke(context: Context, base: str) -> tuple[str, bytes, int]:
    """Fetch the newest segment, revoke the token, then request the playlist again.

    Returns the segment's file name, its bytes and the HTTP status of the
    request made with the revoked token. The token is revoked on every path.
    """
    tokens = context.target.tokens
    issued = tokens.issue(TOKEN_SUBJECT, ["stream:view"], _TOKEN_TTL_S)
    headers = {"Authorization": f"Bearer {issued.token}"}
    revoked = False
    try:
        async with _session() as session:
            name, body = await _fetch_segment(session, base, headers)
            revoked = tokens.revoke(
                issued.claims.token_id, "rehearsal stream check finished"
            )
            async with session.get(
                f"{base}/stream/live.m3u8", headers=headers
            ) as reply:
                after_revoke = reply.status
    finally:
        if not revoked:
            tokens.revoke(issued.claims.token_id, "rehearsal stream check finished")
    return name, body, after_revoke


async def check_clip(context: Context) -> Outcome:
    """Write a clip through the studio's control endpoint and check it with ffprobe."""
    studio = _studio_config(context)
    if studio is None:
        return _no_studio()
    base = await studio_url(context)
    if base is None:
        return failed(
            "the studio reports no HTTP port; check that its HTTP server started "
            "in the box's log"
        )
    tokens = context.target.tokens
    issued = tokens.issue(TOKEN_SUBJECT, ["stream:publish"], _TOKEN_TTL_S)
    headers = {"Authorization": f"Bearer {issued.token}"}
    try:
        async with (
            _session() as session,
            session.post(
                f"{base}/stream/control/clip",
                headers=headers,
                json={"note": "rehearsal"},
            ) as reply,
        ):
            status = reply.status
            text = await reply.text()
    except aiohttp.ClientError as err:
        return failed(f"cannot reach {base}/stream/control/clip: {err}")
    finally:
        tokens.revoke(issued.claims.token_id, "rehearsal clip check finished")
    document = _json_object(text)
    if status != 200:
        message = document.get("message") or text[:200]
        return failed(f"the studio wrote no clip (HTTP {status}): {message}")
    return await _judge_clip(context, document)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _judge_clip(context: Context, document: dict[str, Any]) -> Outcome:
    # The control endpoint wraps the clip in "result".
    record = document.get("result", document)
    path = _clip_path(context, record)
    if path is None:
        return failed(
            "the studio's clip reply names no clip file; the box and this "
            f"rehearsal may be of different releases (reply keys: {sorted(document)})"
        )
    facts: dict[str, Any] = {
        "clip_id": record.get("id"),
        "path": str(path),
        "size": record.get("size"),
        "duration_s": record.get("duration_s"),
    }
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as err:
        return failed(
            f"cannot read the clip {path}: {err.strerror}; run the rehearsal on the "
            "box, as the user that runs it",
            **facts,
        )
    digest = hashlib.sha256(data).hexdigest()
    if record.get("sha256") not in (None, digest):
        return failed(
            f"clip {path.name} does not match the sha256 the studio recorded",
            **facts,
        )
    probe = await _ffprobe.probe(path)
    facts["probed_duration_s"] = probe.duration_s
    problem = probe.timestamp_problem()
    if problem is not None:
        return failed(f"clip {path.name} is not playable: {problem}", **facts)
    if probe.duration_s <= 0.0:
        return failed(f"clip {path.name} has no duration", **facts)
    errors = await _ffprobe.decode_errors(path)
    if errors:
        return failed(f"ffmpeg reports errors decoding {path.name}: {errors}", **facts)
    return passed(
        f"clip {path.name} written ({len(data)} bytes, {probe.duration_s:.1f} s), "
        "starts on a key frame and decodes without errors",
        **facts,
    )


def _clip_path(context: Context, record: object) -> Path | None:
    """Return the clip's file: replies name it, in the studio's clips folder."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("path"), str):
        return Path(record["path"])
    name = record.get("file")
    if not isinstance(name, str) or Path(name).name != name or not name:
        return None
    return context.target.config.data_dir / "studio" / "clips" / name
