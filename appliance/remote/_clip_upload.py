"""Upload of the studio's clips to the fleet's upstream broker, through sync.

The studio records each clip it writes in its store and queues it for
upload. While sync is connected and has no event waiting,
:class:`ClipUploader` sends the oldest queued clip in chunks of 128 KiB at
QoS 1 on the box's ``clips/chunk`` topic. A manifest with the clip's
size, SHA-256 and chunk count follows on ``clips/manifest``. The clip is
marked uploaded only after the broker acknowledged every one of those
messages. The fleet ACL (``provisioning/fleet_access.py``) lets each box
write its own ``nightbox/<site>/box/<box>/clips/+`` and operators read
every box's; collectors do not read clips.

Each chunk carries MQTT 5 user properties that place it in its clip:
``clip`` (the id), ``chunk`` (from 0), ``chunks``, ``offset`` and ``size``
(the clip's bytes). With them a receiver can rebuild the file from chunks
that arrive more than once, as QoS 1 allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.bus import envelope
from appliance.bus.topics import Topics
from appliance.errors import NightboxError

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_TOPIC",
    "MANIFEST_TOPIC",
    "ClipRejectedError",
    "ClipToUpload",
    "ClipUploader",
    "ClipUploads",
]

_LOGGER = logging.getLogger(__name__)

CHUNK_BYTES = 128 * 1024
# Topics under the box's own nightbox/<site>/box/<box>/.
CHUNK_TOPIC = "clips/chunk"
MANIFEST_TOPIC = "clips/manifest"
# Chunks waiting for their PUBACK at once, at most (and never more than the
# sync window, which keeps every message in flight under the broker's
# Receive Maximum).
MAX_CHUNKS_IN_FLIGHT = 4
# Hashing reads the file in blocks of this size.
_HASH_BLOCK_BYTES = 1024 * 1024
# After the upload queue failed to read or update, the uploader waits this
# long (or until a clip is queued) before it tries again.
_SOURCE_RETRY_S = 30.0


class ClipToUpload(Protocol):
    """A clip written by the studio and queued for upload."""

    @property
    def id(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def trigger(self) -> str: ...
    @property
    def set_id(self) -> str | None: ...
    @property
    def duration_s(self) -> float: ...


class ClipUploads(Protocol):
    """The studio's upload queue, as its store keeps it.

    ``wake`` is set (on the event loop's thread) whenever a clip is queued;
    the uploader clears it before it reads the queue.
    """

    wake: asyncio.Event

    def pending_uploads(self) -> Sequence[ClipToUpload]:
        """Return the clips not uploaded yet, oldest first."""
        ...

    def mark_uploaded(self, clip_id: str) -> object:
        """Record that the upstream broker acknowledged the whole clip."""
        ...


class ClipRejectedError(NightboxError):
    """The upstream broker rejected a chunk or manifest with a failure PUBACK."""


class _QueueError(NightboxError):
    """A failed read or update of the upload queue, which the uploader retries."""


class _ClipFileError(NightboxError, ValueError):
    """A queued clip's file is missing or differs from its record."""


class ClipUploader:
    """The sender of queued clips upstream, chunk by chunk, after the events.

    One instance lives as long as the sync service. The upload position of
    a clip survives a lost connection, so the next connection resumes at
    the first chunk without a PUBACK. A restart of the box sends the whole
    clip again.
    """

    def __init__(
        self,
        source: ClipUploads,
        topics: Topics,
        box_id: str,
        src: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        self._source = source
        self._box_id = box_id
        self._src = src
        self._chunk_bytes = chunk_bytes
        self._chunk_topic = topics.box_topic(box_id, CHUNK_TOPIC)
        self._manifest_topic = topics.box_topic(box_id, MANIFEST_TOPIC)
        # Chunks acknowledged so far per clip: where an upload resumes.
        self._acknowledged_chunks: dict[str, int] = {}
        # Clips whose file cannot be sent, with the reason. They are skipped
        # until the service starts again.
        self._unsendable: dict[str, str] = {}
        # PUBACK futures of this uploader's messages, by message id.
        self._waiters: dict[int, asyncio.Future[ReasonCode]] = {}

        self.uploaded = 0
        self.bytes_sent = 0
        self.counts: Counter[str] = Counter()

    @property
    def inflight(self) -> int:
        """Messages of this uploader that wait for their PUBACK."""
        return len(self._waiters)

    def state(self) -> dict[str, Any]:
        """Return the upload figures for the sync state."""
        return {
            "uploaded": self.uploaded,
            "bytes_sent": self.bytes_sent,
            "uploading": sorted(self._acknowledged_chunks),
            "unsendable": len(self._unsendable),
            "rejected": self.counts["rejected"],
            "queue_errors": self.counts["queue_errors"],
        }

    def acknowledge(self, mid: int, reason: ReasonCode) -> None:
        """Pass on the PUBACK of message ``mid`` if this uploader sent it."""
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reason)

    async def run(
        self, paho: mqtt.Client, events_idle: asyncio.Event, max_inflight: int
    ) -> None:
        """Upload queued clips over ``paho`` until cancelled.

        A chunk goes only while ``events_idle`` is set, so an event waits
        behind at most one chunk more than those already in flight. At most
        ``MAX_CHUNKS_IN_FLIGHT`` chunks are in flight, and fewer when
        ``max_inflight`` is lower. Raises ClipRejectedError for a failure
        PUBACK and aiomqtt's MqttCodeError when paho cannot send.
        """
        limit = max(1, min(MAX_CHUNKS_IN_FLIGHT, max_inflight))
        try:
            while True:
                self._source.wake.clear()
                try:
                    clip = self._next_clip()
                    if clip is not None:
                        await self._upload(clip, paho, events_idle, limit)
                        continue
                except _QueueError:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._source.wake.wait(), _SOURCE_RETRY_S
                        )
                    continue
                await self._source.wake.wait()
        finally:
            # A lost connection loses these PUBACKs, so the chunks without
            # one go again on the next connection.
            for waiter in self._waiters.values():
                waiter.cancel()
            self._waiters.clear()

    def _next_clip(self) -> ClipToUpload | None:
        try:
            pending = self._source.pending_uploads()
        except Exception as err:
            # The queue lives in the studio's store, and a failure there must
            # not end the connection that carries the events.
            self._queue_failed("read the clip upload queue", err)
        for clip in pending:
            if clip.id not in self._unsendable:
                return clip
        return None

    def _queue_failed(self, action: str, err: Exception) -> NoReturn:
        self.counts["queue_errors"] += 1
        _LOGGER.error(
            "Sync of box %s could not %s (%s); retrying in %.0f s",
            self._box_id,
            action,
            err,
            _SOURCE_RETRY_S,
            exc_info=err,
        )
        raise _QueueError(action) from err

    async def _upload(
        self,
        clip: ClipToUpload,
        paho: mqtt.Client,
        events_idle: asyncio.Event,
        limit: int,
    ) -> None:
        try:
            await asyncio.to_thread(_check_file, clip)
        except _ClipFileError as err:
            self._give_up(clip, err)
            return

        chunks = math.ceil(clip.size / self._chunk_bytes)
        first = self._acknowledged_chunks.setdefault(clip.id, 0)
        if first == 0:
            _LOGGER.info(
                "Sync of box %s is uploading clip %s (%d bytes in %d chunks)",
                self._box_id,
                clip.id,
                clip.size,
                chunks,
            )
        pending: deque[tuple[int, asyncio.Future[ReasonCode]]] = deque()
        for index in range(first, chunks):
            while len(pending) >= limit:
                await self._settle(clip, pending)
            offset = index * self._chunk_bytes
            length = min(self._chunk_bytes, clip.size - offset)
            await events_idle.wait()
            try:
                data = await asyncio.to_thread(_read_chunk, clip.path, offset, length)
            except _ClipFileError as err:
                self._give_up(clip, err)
                return
            # Events committed during the read go first.
            await events_idle.wait()
            properties = _chunk_properties(clip, index, chunks, offset)
            waiter = self._publish(paho, self._chunk_topic, data, properties)
            pending.append((index, waiter))
            self.bytes_sent += len(data)
        while pending:
            await self._settle(clip, pending)

        manifest = envelope.encode(self._src, {"data": self._manifest(clip, chunks)})
        reason = await self._publish(paho, self._manifest_topic, manifest, None)
        self._check(reason, clip, "manifest")
        try:
            self._source.mark_uploaded(clip.id)
        except Exception as err:
            # The clip stays queued with every chunk acknowledged, so after
            # the retry only its manifest is sent again.
            self._queue_failed(f"mark clip {clip.id} uploaded", err)
        del self._acknowledged_chunks[clip.id]
        self.uploaded += 1
        _LOGGER.info("Sync of box %s uploaded clip %s", self._box_id, clip.id)

    def _give_up(self, clip: ClipToUpload, err: _ClipFileError) -> None:
        self._unsendable[clip.id] = str(err)
        self._acknowledged_chunks.pop(clip.id, None)
        self.counts["unsendable"] += 1
        _LOGGER.error(
            "Sync of box %s cannot upload clip %s: %s", self._box_id, clip.id, err
        )

    async def _settle(
        self,
        clip: ClipToUpload,
        pending: deque[tuple[int, asyncio.Future[ReasonCode]]],
    ) -> None:
        """Wait for the oldest chunk's PUBACK and record it."""
        index, waiter = pending.popleft()
        reason = await waiter
        self._check(reason, clip, f"chunk {index}")
        self._acknowledged_chunks[clip.id] = index + 1

    def _check(self, reason: ReasonCode, clip: ClipToUpload, what: str) -> None:
        if reason.is_failure:
            self.counts["rejected"] += 1
            raise ClipRejectedError(
                f"upstream broker rejected {what} of clip {clip.id} ({reason!s}); "
                f"check that its ACL lets box {self._box_id} publish on "
                f"{self._chunk_topic} and {self._manifest_topic}"
            )

    def _publish(
        self,
        paho: mqtt.Client,
        topic: str,
        payload: bytes,
        properties: Properties | None,
    ) -> asyncio.Future[ReasonCode]:
        info = paho.publish(topic, payload, 1, False, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        waiter: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._waiters[info.mid] = waiter
        return waiter

    def _manifest(self, clip: ClipToUpload, chunks: int) -> dict[str, Any]:
        return {
            "clip": clip.id,
            "size": clip.size,
            "sha256": clip.sha256,
            "chunks": chunks,
            "chunk_bytes": self._chunk_bytes,
            "created_at": clip.created_at,
            "trigger": clip.trigger,
            "set_id": clip.set_id,
            "duration_s": clip.duration_s,
        }


def _chunk_properties(
    clip: ClipToUpload, index: int, chunks: int, offset: int
) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [
        ("clip", clip.id),
        ("chunk", str(index)),
        ("chunks", str(chunks)),
        ("offset", str(offset)),
        ("size", str(clip.size)),
    ]
    return properties


def _check_file(clip: ClipToUpload) -> None:
    """Raise _ClipFileError unless the file has the recorded size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    try:
        with clip.path.open("rb") as file:
            while block := file.read(_HASH_BLOCK_BYTES):
                digest.update(block)
                size += len(block)
    except OSError as err:
        raise _ClipFileError(
            f"cannot read {clip.path} ({err.strerror or err})"
        ) from err
    if size == 0 or size != clip.size or digest.hexdigest() != clip.sha256.lower():
        raise _ClipFileError(
            f"{clip.path} has {size} bytes with SHA-256 "
            f"{digest.hexdigest()[:16]}..., but the clip was recorded with "
            f"{clip.size} bytes and {clip.sha256[:16]}...; the file changed "
            "after it was written, so it is not uploaded"
        )


def _read_chunk(path: Path, offset: int, length: int) -> bytes:
    """Return ``length`` bytes from ``offset``; raise _ClipFileError if short."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read(length)
    except OSError as err:
        raise _ClipFileError(f"cannot read {path} ({err.strerror or err})") from err
    if len(data) != length:
        raise _ClipFileError(
            f"{path} ended at {offset + len(data)} bytes, before the recorded size; "
            "the file changed after it was written, so it is not uploaded"
        )
    return data
