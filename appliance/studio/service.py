"""The camera studio: the stream, its overlays, clips, controls and telemetry.

:class:`Studio` runs the configured camera with the overlays drawn in (the
media path is :mod:`appliance.studio._stream`: HLS, the optional push, the
slate and the clip buffer). Clips are written in a worker thread, recorded
with their checksum and queued for upload through sync. The stream state
is published, retained, on ``box/<box>/tele/stream`` every second, and a
clip is written when a set ends.

A clip needs at least one key frame interval of camera video in the
buffer (``no-video`` before that, also after each switch back from the
slate). Each trigger cuts at most one clip per key frame interval of
buffer movement. A repeat is rejected as ``too-soon``, and the rejection
names the clip just cut, which contains the same video. Clips other than
set-end clips are rejected as ``clips-full`` while twice ``clips_keep`` of
them wait for their upload. Clips that creator stations ask for (trigger
``request``) have a share of ``clips_keep`` of those, so the panel button,
the console and the fleet can still cut clips once stations have used
theirs. A set-end clip is rejected only when the stream is stopped, the
camera is down or the buffer contains too little video. At start-up the
clips folder is checked against the clips table, because an abrupt stop of
the box can leave files behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import sqlite3
import time
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.commerce.config import SetSlot
from appliance.remote._sync_inbound import LimitedLog
from appliance.studio._actions import (
    StudioError,
    check_fields,
    message_field,
    note_field,
    open_drop,
)
from appliance.studio._store import (
    LIMIT_PER_KEEP,
    RECOVERED,
    REQUEST,
    SET_END,
    ClipRecord,
    ClipStore,
)
from appliance.studio._stream import StudioStream
from appliance.studio.clips import ClipError, ClipFile, inspect_clip, write_clip
from appliance.studio.config import StudioConfig
from appliance.studio.http import StudioHttp
from appliance.studio.overlays import (
    OverlayCompositor,
    fit_message,
    read_overlay_state,
)
from hardware.camera import (
    Camera,
    CameraSettings,
    EncodedPacket,
    StreamInfo,
    create_camera,
)

if TYPE_CHECKING:
    from appliance.runtime import Box

_LOGGER = logging.getLogger(__name__)

TRIGGERS = ("button", "command", "console", "set-end", "request")
STATE_INTERVAL_S = 1.0
# Clips other than set-end clips written at once, at most. A further clip is
# rejected as busy until one of them is stored or has failed.
MAX_CLIPS_IN_FLIGHT = 3
# The requester that a drop's event names when a creator station opens the
# drop over HTTP.
HTTP_REQUESTER = "studio-http"
# Clip rejections of one reason are logged at most once in this many seconds,
# so a stuck button or a request loop cannot flood the log. Each one is counted.
REJECTION_LOG_INTERVAL_S = 5.0
# A failure to build or publish the stream state is logged with its
# traceback the first time, then at most once in this many seconds.
STATE_FAILURE_LOG_INTERVAL_S = 60.0
# The file name of a clip: its id, 32 hex digits, and ``.mp4``.
CLIP_FILE = re.compile(r"[0-9a-f]{32}\.mp4")


@dataclass(frozen=True, slots=True)
class LastClip:
    """The clip a trigger cut last and the buffer's end when it was cut."""

    id: str
    end_s: float


@dataclass(frozen=True, slots=True)
class ClipJob:
    """A clip being written: its id now, its record once ``task`` is done."""

    id: str
    trigger: str
    task: asyncio.Task[ClipRecord]


class Studio:
    """The box's camera studio: stream, slate, overlays, clips and telemetry."""

    def __init__(self, box: Box, config: StudioConfig) -> None:
        self._box = box
        self.config = config
        self.settings = CameraSettings(
            width=config.width,
            height=config.height,
            fps=config.fps,
            bitrate_kbps=config.bitrate_kbps,
            keyframe_interval_s=config.keyframe_interval_s,
            preset=config.preset,
            audio=config.audio,
        )
        folder = box.config.data_dir / "studio"
        self.clips_folder = folder / "clips"
        self.clips = ClipStore(box.store, box.clock, config.clips_keep)
        self.compositor = OverlayCompositor(config.width, config.height)
        camera = create_camera(config.camera, self.settings, self.compositor)
        self.stream = StudioStream(
            config, self.settings, camera, folder / "hls", box.clock
        )
        self.http: StudioHttp | None = None
        self._http_lock = asyncio.Lock()
        self.message: str | None = None
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._state_task: asyncio.Task[None] | None = None
        # The clips being written and their triggers.
        self._clip_tasks: dict[asyncio.Task[ClipRecord], str] = {}
        self._last_clips: dict[str, LastClip] = {}
        self._rejection_log = LimitedLog(_LOGGER, REJECTION_LOG_INTERVAL_S)
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._set: SetSlot | None = None
        self._timezone = zoneinfo.ZoneInfo(box.config.commerce.timezone)

    # Lifecycle.

    async def start(self) -> None:
        """Start the stream and the state publisher."""
        self.stream.hls_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.clips_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._check_clips_folder()
        self._set = self._box.config.commerce.set_at(self._box.clock.now())
        self._refresh_overlays()
        await self.start_stream()
        self._state_task = asyncio.create_task(
            self._publish_state_forever(), name="studio-state"
        )
        _LOGGER.info(
            "Studio started: %s camera at %dx%d, %d fps, %d kbit/s",
            self.config.camera,
            self.config.width,
            self.config.height,
            self.config.fps,
            self.config.bitrate_kbps,
        )

    async def stop(self) -> None:
        """Stop the stream, the HTTP server, the push and pending clip writes."""
        await cancel_and_wait(self._state_task)
        for task in list(self._control_tasks):
            await cancel_and_wait(task)
        await self.stream.close()
        # A clip being written is finished, so its file is not left half done.
        await self.wait_for_clips()
        # The lock waits for a server that is starting, so it is stopped too.
        async with self._http_lock:
            if self.http is not None:
                await self.http.stop()
        _LOGGER.info("Studio stopped")

    async def serve_http(self) -> StudioHttp:
        """Start serving the stream over HTTP on ``http_host``:``http_port``.

        Raises OSError naming the address when it cannot be bound; a later
        call tries again.
        """
        async with self._http_lock:
            if self.http is None:
                box = self._box
                http = StudioHttp(
                    lambda: self.stream.hls,
                    box.tokens,
                    box.clock,
                    self.config.http_host,
                    self.config.http_port,
                    control=self._http_controls(),
                )
                await http.start()
                # Set only once the port is bound, so state() never reports a
                # server that is still starting or failed to start.
                self.http = http
                _LOGGER.info(
                    "Studio stream on http://%s:%d/stream/live.m3u8",
                    self.config.http_host,
                    http.port,
                )
            return self.http

    @property
    def camera(self) -> Camera:
        """The studio's camera, which the stream retries while it is down."""
        return self.stream.camera

    @property
    def source(self) -> str | None:
        """``camera`` or ``slate`` while the stream runs, else None."""
        return self.stream.source

    @property
    def running(self) -> bool:
        """True while the stream runs (on the camera or on the slate)."""
        return self.stream.running

    async def start_stream(self) -> None:
        """Start streaming, leaving a stream that already runs as it is."""
        self.stream.start()

    async def stop_stream(self) -> None:
        """Stop the camera or slate. The HLS playlist keeps its segments and ends."""
        await self.stream.stop()

    def schedule(self, action: Callable[[], Any], name: str) -> None:
        """Run the coroutine that ``action`` returns in the background."""

        async def run() -> None:
            await action()

        task = asyncio.create_task(run(), name=name)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    def on_button(self) -> None:
        """Cut a clip for a press of the panel button (on the event loop)."""
        try:
            self.begin_clip("button")
        except StudioError as err:
            _LOGGER.warning("Panel button clip rejected: %s", err.message)

    # Clips.

    def begin_clip(
        self,
        trigger: str,
        note: str | None = None,
        *,
        set_id: str | None = None,
    ) -> ClipJob:
        """Snapshot the clip buffer and start writing the clip in the background.

        Raises StudioError, counted and logged at most once per reason every
        ``REJECTION_LOG_INTERVAL_S``, in these cases: the stream is stopped,
        the camera is down, or the buffer contains less than a key frame
        interval of video. It is also raised when the same trigger cut a clip
        of this buffer moments ago, too many clips are being written, or the
        most clips allowed wait for their upload.
        """
        if trigger not in TRIGGERS:
            raise ValueError(
                f"clip trigger {trigger!r} is invalid; use one of {', '.join(TRIGGERS)}"
            )
        try:
            packets, info, end_s = self._snapshot(trigger)
        except StudioError as err:
            self.counts[f"clip-{err.code}"] += 1
            self._rejection_log.warning(
                err.code, "Clip (%s) rejected: %s", trigger, err.message
            )
            raise
        now = self._box.clock.now()
        if set_id is None:
            playing = self._box.config.commerce.set_at(now)
            set_id = None if playing is None else playing.id
        clip_id = uuid.uuid4().hex
        task = asyncio.create_task(
            self._write(clip_id, packets, info, now, trigger, set_id, note),
            name=f"clip-{clip_id[:8]}",
        )
        self._clip_tasks[task] = trigger
        task.add_done_callback(self._clip_done)
        self._last_clips[trigger] = LastClip(clip_id, end_s)
        return ClipJob(clip_id, trigger, task)

    async def wait_for_clips(self) -> None:
        """Return once every clip being written is stored or has failed."""
        if self._clip_tasks:
            await asyncio.wait(list(self._clip_tasks))

    async def clip(
        self, trigger: str, note: str | None = None, *, set_id: str | None = None
    ) -> ClipRecord:
        """Write a clip of the buffer and return its record once it is stored."""
        return await self.begin_clip(trigger, note, set_id=set_id).task

    def _snapshot(self, trigger: str) -> tuple[list[EncodedPacket], StreamInfo, float]:
        """Return the buffer's packets, their stream and the buffer's end."""
        if not self.running:
            raise StudioError(
                "stream-stopped",
                "the stream is stopped, so there is nothing to clip; start it first",
            )
        stream = self.stream
        if stream.down_since is not None:
            since = datetime.datetime.fromtimestamp(stream.down_since, self._timezone)
            raise StudioError(
                "camera-down",
                f"the camera is down since {since:%H:%M:%S}; the clip would hold "
                "only the slate, so try again once the camera is back "
                f"({stream.last_error})",
            )
        ring = stream.ring
        least_s = self.config.keyframe_interval_s
        packets = ring.snapshot(None)
        if (
            not packets
            or stream.ring_info is None
            or ring.end_s is None
            or ring.duration_s < least_s
        ):
            raise StudioError(
                "no-video",
                f"the buffer contains {ring.duration_s:.2f} s of camera video, less "
                f"than one key frame interval ({least_s:g} s), because the camera "
                f"has just started or come back; try again in {least_s:g} s",
            )
        if trigger != SET_END:
            self._check_too_soon(trigger, ring.end_s)
            self._check_room(trigger)
        return packets, stream.ring_info, ring.end_s

    def _check_too_soon(self, trigger: str, end_s: float) -> None:
        last = self._last_clips.get(trigger)
        if last is None:
            return
        moved_s = end_s - last.end_s
        interval_s = self.config.keyframe_interval_s
        # A buffer that went back belongs to a new timeline, so it has moved on.
        if 0 <= moved_s < interval_s:
            raise StudioError(
                "too-soon",
                f"clip {last.id} was cut by {trigger} {moved_s:.2f} s of video ago "
                "and contains the same video; use that clip, or try again in "
                f"{interval_s - moved_s:.2f} s",
            )

    def _check_room(self, trigger: str) -> None:
        writing = [t for t in self._clip_tasks.values() if t != SET_END]
        if len(writing) >= MAX_CLIPS_IN_FLIGHT:
            raise StudioError(
                "busy",
                f"{len(writing)} clips are being written; try again in a few seconds",
            )
        if trigger == REQUEST:
            requested = self.clips.waiting(REQUEST) + writing.count(REQUEST)
            share = self.clips.request_limit
            if requested >= share:
                raise StudioError(
                    "clips-full",
                    f"{requested} clips cut on request wait for their upload on "
                    "the box, the share of creator stations (studio.clips_keep "
                    f"= {share}); the panel button, the console and the fleet "
                    "can still cut clips. A clip is removed only once it is "
                    "uploaded; connect the box's [sync] link so the clips "
                    "upload, or raise studio.clips_keep",
                )
        waiting = self.clips.on_disk(set_end=False, waiting=True) + len(writing)
        limit = self.clips.limit
        if waiting >= limit:
            raise StudioError(
                "clips-full",
                f"{waiting} clips wait for their upload on the box, the most it "
                f"keeps ({LIMIT_PER_KEEP} x studio.clips_keep = {limit}), and a "
                "clip is removed only once it is uploaded; connect the box's "
                "[sync] link so the clips upload, or raise studio.clips_keep",
            )

    async def _write(
        self,
        clip_id: str,
        packets: list[EncodedPacket],
        info: StreamInfo,
        created_at: float,
        trigger: str,
        set_id: str | None,
        note: str | None,
    ) -> ClipRecord:
        path = self.clips_folder / f"{clip_id}.mp4"
        try:
            written = await asyncio.to_thread(write_clip, packets, info, path)
        except ClipError as err:
            self.counts["clip-write-failed"] += 1
            self.last_error = str(err)
            _LOGGER.error("Clip %s (%s) failed: %s", clip_id, trigger, err)
            last = self._last_clips.get(trigger)
            if last is not None and last.id == clip_id:
                # No clip contains this video, so the trigger may cut it again.
                del self._last_clips[trigger]
            raise StudioError("clip-failed", str(err)) from err
        record = ClipRecord(
            id=clip_id,
            path=written.path,
            size=written.size,
            sha256=written.sha256,
            created_at=created_at,
            trigger=trigger,
            set_id=set_id,
            duration_s=written.duration_s,
            note=note,
        )
        with self._box.store.transaction() as transaction:
            self.clips.record(transaction, record)
        self.clips.queued()
        self.counts["clips"] += 1
        _LOGGER.info(
            "Clip %s written (%s, %.1f s, %d bytes)",
            clip_id,
            trigger,
            record.duration_s,
            record.size,
        )
        self._remove(self.clips.prune())
        return record

    def _clip_done(self, task: asyncio.Task[ClipRecord]) -> None:
        self._clip_tasks.pop(task, None)
        if not task.cancelled():
            # Retrieving the exception here stops asyncio from logging "never
            # retrieved" for a clip task that no caller awaits.
            task.exception()

    @staticmethod
    def _remove(paths: list[Path]) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                _LOGGER.warning("Could not remove old clip %s: %s", path, err)

    async def _check_clips_folder(self) -> None:
        """Match the clips folder to the clips table after an abrupt stop.

        A clip file is renamed into place only once it is whole, and its row
        commits after that, so a box killed in between leaves a whole file
        without a row: it is checked and recorded, so it is uploaded.
        Half-written ``.partial`` files are deleted, as are files recorded
        as removed and files that do not read as a clip. A row whose file
        is gone is marked removed. Each is logged and counted.
        """
        folder = self.clips_folder
        for partial in sorted(folder.glob(".*.partial")):
            self._discard(partial, "folder-partial", "half written")
        files = self.clips.files()
        found: set[str] = set()
        for path in sorted(folder.glob("*.mp4")):
            clip_id = path.stem
            found.add(clip_id)
            stored = files.get(clip_id)
            if stored is False:
                self._discard(path, "folder-removed", "recorded as removed")
            elif stored is None and not CLIP_FILE.fullmatch(path.name):
                self.counts["folder-foreign"] += 1
                _LOGGER.warning(
                    "Clip folder: %s is not named as a clip; left as it is", path
                )
            elif stored is None:
                await self._recover(path)
        missing = sorted(
            i for i, on_disk in files.items() if on_disk and i not in found
        )
        if missing:
            self.clips.mark_removed(missing)
            self.counts["folder-missing"] += len(missing)
            for clip_id in missing:
                _LOGGER.warning(
                    "Clip %s is in the store but its file is gone from %s; "
                    "recorded as removed",
                    clip_id,
                    folder,
                )
        checked = self._folder_counts()
        if checked:
            _LOGGER.info(
                "Clip folder checked after an abrupt stop: %s",
                ", ".join(f"{count} {what}" for what, count in checked.items()),
            )

    def _folder_counts(self) -> dict[str, int]:
        """Return what the start-up check of the clips folder found, by kind."""
        return {
            key.removeprefix("folder-"): count
            for key, count in self.counts.items()
            if key.startswith("folder-")
        }

    async def _recover(self, path: Path) -> None:
        try:
            found, created_at = await asyncio.to_thread(_clip_and_time, path)
        except (ClipError, OSError) as err:
            self._discard(path, "folder-unreadable", f"unreadable: {err}")
            return
        playing = self._box.config.commerce.set_at(created_at)
        record = ClipRecord(
            id=path.stem,
            path=path,
            size=found.size,
            sha256=found.sha256,
            created_at=created_at,
            trigger=RECOVERED,
            set_id=None if playing is None else playing.id,
            duration_s=found.duration_s,
        )
        with self._box.store.transaction() as transaction:
            self.clips.record(transaction, record)
        self.clips.queued()
        self.counts["folder-recovered"] += 1
        _LOGGER.warning(
            "Clip %s was whole on disk without its row (the box stopped while "
            "storing it); recorded (%.1f s, %d bytes) and queued for upload",
            record.id,
            record.duration_s,
            record.size,
        )

    def _discard(self, path: Path, count: str, reason: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            _LOGGER.warning(
                "Clip folder: could not remove %s (%s): %s", path, reason, err
            )
            return
        self.counts[count] += 1
        _LOGGER.warning("Clip folder: removed %s, %s", path.name, reason)

    # The HTTP server's control actions, for creator stations on the venue network.

    def _http_controls(
        self,
    ) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {
            "start": self._control_start,
            "stop": self._control_stop,
            "clip": self._control_clip,
            "drop-open": self._control_drop_open,
            "overlay": self._control_overlay,
        }

    async def _control_start(self, data: dict[str, Any]) -> dict[str, Any]:
        check_fields(data, "start")
        await self.start_stream()
        return {"running": self.running}

    async def _control_stop(self, data: dict[str, Any]) -> dict[str, Any]:
        check_fields(data, "stop")
        await self.stop_stream()
        return {"running": self.running}

    async def _control_clip(self, data: dict[str, Any]) -> dict[str, Any]:
        check_fields(data, "clip")
        record = await self.clip("request", note_field(data))
        return public_clip(record)

    async def _control_drop_open(self, data: dict[str, Any]) -> dict[str, Any]:
        check_fields(data, "drop-open")
        with self._box.store.transaction() as transaction:
            return open_drop(self._box, transaction, data, by=HTTP_REQUESTER)

    async def _control_overlay(self, data: dict[str, Any]) -> dict[str, Any]:
        check_fields(data, "overlay")
        return self.show_message(message_field(data))

    # State and overlays.

    def state(self) -> dict[str, Any]:
        """Return the stream's state and counters, as published on ``tele/stream``."""
        counts = self.clips.counts()
        latest = self.clips.latest()
        last_clip = None if latest is None else public_clip(latest)
        stream = self.stream
        hls = stream.hls
        push = None
        if stream.push is not None:
            push = {"target": stream.push.target, **stream.push.state()}
        http = self.http
        playing = self._set
        return {
            "running": self.running,
            "camera": self.config.camera,
            "source": self.source,
            "camera_down_since": stream.down_since,
            "size": f"{self.config.width}x{self.config.height}",
            **stream.figures(),
            "segments_written": 0 if hls is None else hls.segments_written,
            "segments_served": 0 if http is None else http.segments_served,
            "viewers": 0 if http is None else http.viewers,
            "http_port": None if http is None else http.bound_port,
            "clip_queue": counts["pending_upload"],
            "clips": counts["written"],
            "clips_on_disk": counts["on_disk"],
            "last_clip": last_clip,
            "push": push,
            "set": None
            if playing is None
            else {"id": playing.id, "creator": playing.creator},
            "message": self.message,
            "last_error": self.last_error or stream.last_error,
            "refused": {k: v for k, v in self.counts.items() if k.startswith("clip-")},
            "clips_folder": self._folder_counts(),
        }

    def show_message(self, message: str | None) -> dict[str, Any]:
        """Show ``message`` on the stream, or hide the message for None.

        Returns the reply to the creator station: the message, whether the
        frame shows it whole (``shown``), cut (``shortened``) or not at all
        (``hidden``), and the lines drawn.
        """
        self.message = message
        self._refresh_overlays()
        if message is None:
            return {"message": None, "display": "hidden", "lines": []}
        fit = fit_message(message, self.config.width, self.config.height)
        return {"message": message, "display": fit.display, "lines": list(fit.lines)}

    def _refresh_overlays(self) -> None:
        try:
            state = read_overlay_state(self._box, self.message)
        except sqlite3.Error as err:
            _LOGGER.warning("Could not read the overlay state: %s", err)
            return
        self.compositor.update(state)

    def check_set_end(self) -> None:
        """Write the clip of a set that has ended since the last check.

        The state publisher calls it every second; a rejected clip is
        logged and counted by :meth:`begin_clip`.
        """
        now = self._box.clock.now()
        previous = self._set
        current = self._box.config.commerce.set_at(now)
        self._set = current
        ended = (
            previous is not None
            and (current is None or current.id != previous.id)
            and now >= previous.ends_at
        )
        if previous is None or not ended or not self.config.clip_on_set_end:
            return
        _LOGGER.info("Set %s ended; writing its clip", previous.id)
        with contextlib.suppress(StudioError):
            # begin_clip has logged and counted the reason.
            self.begin_clip("set-end", f"end of set {previous.id}", set_id=previous.id)

    async def _publish_state_forever(self) -> None:
        """Check the set's end, refresh the overlays and publish the state, each second.

        A failure in any step is logged and counted, and the next second
        tries again, so one bad value never stops the telemetry for the
        rest of the night.
        """
        bus = self._box.bus
        topic = bus.topics.stream_state(self._box.config.box_id)
        logged_at: float | None = None
        unlogged = 0
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            try:
                self.check_set_end()
                self._refresh_overlays()
                if bus.connected.is_set():
                    await bus.publish_json(topic, {"data": self.state()}, retain=True)
            except (aiomqtt.MqttError, TimeoutError) as err:
                _LOGGER.warning("Could not publish the stream state: %s", err)
            except Exception as err:
                self.counts["state-failures"] += 1
                now = time.monotonic()
                if logged_at is None:
                    _LOGGER.exception(
                        "Could not build or publish the stream state; trying "
                        "again every %g s",
                        STATE_INTERVAL_S,
                    )
                elif now - logged_at >= STATE_FAILURE_LOG_INTERVAL_S:
                    _LOGGER.warning(
                        "The stream state still fails to build or publish: %s "
                        "(%d failures since the last report)",
                        err,
                        unlogged + 1,
                    )
                else:
                    unlogged += 1
                    continue
                logged_at = now
                unlogged = 0


def _clip_and_time(path: Path) -> tuple[ClipFile, float]:
    """Return the clip file at ``path`` and when it was last written."""
    return inspect_clip(path), path.stat().st_mtime


def public_clip(record: ClipRecord) -> dict[str, Any]:
    """Return a clip as replies and the stream state show it, without its path."""
    summary = record.summary()
    del summary["path"]
    return summary
