"""Blobs through sync: retained chunks on the upstream broker, fetched by hash.

The operator publishes each blob as retained QoS 1 messages of at most
256 KiB (``nightbox fleet assets send``) on::

    nightbox/<site>/assets/<sha256>/<index>/<count>

``index`` counts from 0 and ``count`` is the number of chunks, so every
chunk but the last has exactly CHUNK_BYTES bytes. The box's sync service
subscribes, one blob at a time, to ``nightbox/<site>/assets/<sha256>/#``
for a blob that its manifest lists and the cache lacks. The broker then
sends the retained chunks, whenever the operator published them. The
box writes each chunk at its offset in ``assets/incoming/<sha256>.part``
and hands the file to the cache once every chunk arrived, which hashes it
and keeps it only when hash and size match the manifest.

A chunk of a blob the box did not ask for, or one whose topic or length
does not fit the manifest, is dropped and counted. A blob that stops
arriving is asked for again (a new subscription makes the broker send the
retained chunks again) after STALL_S. A blob whose chunks do not add up to
its hash is not asked for again until REJECTED_RETRY_S later, so a bad
upload does not loop. A timer wakes the fetcher when that time has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.assets._blobs import BlobRejected, short_hash
from appliance.bus.topics import ROOT
from appliance.remote._sync_inbound import LimitedLog

if TYPE_CHECKING:
    from appliance.assets.cache import AssetCache
    from appliance.assets.manifest import AssetEntry

__all__ = [
    "CHUNK_BYTES",
    "AssetFetcher",
    "blob_filter",
    "chunk_count",
    "chunk_messages",
    "chunk_topic",
    "parse_chunk_topic",
]

_LOGGER = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
# A blob with no chunk for this many seconds is asked for again.
STALL_S = 30.0
# A blob whose chunks did not match its hash is asked for again after this
# many seconds, when the operator may have published it again.
REJECTED_RETRY_S = 600.0
# Chunk bytes received but not written yet, at most. Chunks beyond it are
# dropped and come again with the next subscription.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
_LOG_INTERVAL_S = 5.0
_CHUNK_LEVELS = re.compile(r"([0-9a-f]{64})/(0|[1-9][0-9]{0,8})/([1-9][0-9]{0,8})\Z")


def assets_prefix(site: str) -> str:
    """Return the topic prefix of a site's blob chunks, with its final slash."""
    return f"{ROOT}/{site}/assets/"


def chunk_topic(site: str, sha256: str, index: int, count: int) -> str:
    """Return the topic of chunk ``index`` of ``count`` of a blob."""
    return f"{assets_prefix(site)}{sha256}/{index}/{count}"


def blob_filter(site: str, sha256: str) -> str:
    """Return the topic filter of every chunk of one blob."""
    return f"{assets_prefix(site)}{sha256}/#"


def chunk_count(size: int) -> int:
    """Return the number of chunks of a blob of ``size`` bytes."""
    return max(1, math.ceil(size / CHUNK_BYTES))


def chunk_length(size: int, index: int) -> int:
    """Return the length of chunk ``index`` of a blob of ``size`` bytes."""
    return min(CHUNK_BYTES, size - index * CHUNK_BYTES)


def parse_chunk_topic(site: str, topic: str) -> tuple[str, int, int] | None:
    """Return the hash, index and count of a chunk topic, or None for another topic."""
    prefix = assets_prefix(site)
    if not topic.startswith(prefix):
        return None
    match = _CHUNK_LEVELS.match(topic.removeprefix(prefix))
    if match is None:
        return None
    return match[1], int(match[2]), int(match[3])


def chunk_messages(site: str, sha256: str, path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield the topic and payload of every chunk of the blob file at ``path``."""
    size = path.stat().st_size
    count = chunk_count(size)
    with open(path, "rb") as source:
        for index in range(count):
            payload = source.read(CHUNK_BYTES)
            yield chunk_topic(site, sha256, index, count), payload


@dataclass(slots=True)
class _Assembly:
    """The chunks of one blob received so far, written into its part file."""

    entry: AssetEntry
    part: Path
    received: set[int] = field(default_factory=set)
    last_chunk_at: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return chunk_count(self.entry.size)


class AssetFetcher:
    """The box's side of blob delivery through sync, for one :class:`AssetCache`.

    The sync service calls :meth:`offer` for every upstream message and
    runs :meth:`follow` while connected. The cache runs :meth:`run`.
    """

    def __init__(self, cache: AssetCache, site: str) -> None:
        self._cache = cache
        self._site = site
        self._prefix = assets_prefix(site)
        self._changed = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, int, bytes]] = asyncio.Queue()
        self._queued_bytes = 0
        self._assembly: _Assembly | None = None
        self._resubscribe = False
        # Blobs in back-off after a rejection, with the loop time at which
        # they may be asked for again, and the timer that wakes the fetcher.
        self._retry_at: dict[str, float] = {}
        self._retry_timer: asyncio.TimerHandle | None = None
        # The blob whose chunks the upstream broker was asked for, if any.
        self._requested: str | None = None
        self._log = LimitedLog(_LOGGER, _LOG_INTERVAL_S)
        # What happened to chunks since start, by name.
        self.counts: Counter[str] = Counter()

    def wake(self) -> None:
        """Re-read which blob to fetch: the manifest, pins or stored blobs changed."""
        self._changed.set()

    def current_prefix(self) -> str | None:
        """Return the hash prefix of the blob requested from the upstream broker.

        None while no request is outstanding: the box is offline, lacks
        nothing, or waits for the retry time of a rejected blob.
        """
        requested = self._requested
        return None if requested is None else short_hash(requested)

    def _target(self) -> AssetEntry | None:
        """Return the blob to fetch now: the first one to fetch not in back-off."""
        for entry in self._cache.blobs_to_fetch():
            if entry.sha256 not in self._retry_at:
                return entry
        return None

    def _back_off(self, sha256: str) -> None:
        """Leave a rejected blob alone for REJECTED_RETRY_S, then wake the fetcher."""
        loop = asyncio.get_running_loop()
        self._retry_at[sha256] = loop.time() + REJECTED_RETRY_S
        self._arm_retry_timer()

    def _arm_retry_timer(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._retry_at:
            loop = asyncio.get_running_loop()
            first = min(self._retry_at.values())
            self._retry_timer = loop.call_at(first, self._end_back_off)

    def _end_back_off(self) -> None:
        """Release every blob whose retry time has passed, and look again."""
        self._retry_timer = None
        now = asyncio.get_running_loop().time()
        due = [sha for sha, retry_at in self._retry_at.items() if retry_at <= now]
        for sha256 in due:
            del self._retry_at[sha256]
            _LOGGER.info(
                "Asset blob %s may be requested again after its rejection",
                short_hash(sha256),
            )
        # A timer may fire a little early; it is armed again for the rest.
        self._arm_retry_timer()
        if due:
            self.wake()

    # Called by the sync service.

    def offer(self, topic: str, payload: bytes) -> bool:
        """Take a message if it is a blob chunk; return False for any other topic.

        Runs in the sync service's receive loop, so it only checks and
        queues; writing happens in :meth:`run`.
        """
        if not topic.startswith(self._prefix):
            return False
        parsed = parse_chunk_topic(self._site, topic)
        assembly = self._assembly
        if parsed is None:
            self._drop("malformed-topic", "a chunk topic %s is malformed", topic[:120])
            return True
        sha256, index, count = parsed
        if assembly is None or assembly.entry.sha256 != sha256:
            # Chunks of a blob asked for earlier, or retained messages of a
            # kept subscription, arrive after the box moved on.
            self.counts["unrequested"] += 1
            return True
        size = assembly.entry.size
        if count != assembly.count or index >= count:
            self._drop(
                "wrong-count",
                "chunk %d/%d of blob %s does not fit its size of %d bytes "
                "(%d chunks of %d bytes)",
                index,
                count,
                short_hash(sha256),
                size,
                assembly.count,
                CHUNK_BYTES,
            )
            return True
        if len(payload) != chunk_length(size, index):
            self._drop(
                "wrong-length",
                "chunk %d/%d of blob %s has %d bytes, not %d",
                index,
                count,
                short_hash(sha256),
                len(payload),
                chunk_length(size, index),
            )
            return True
        if self._queued_bytes + len(payload) > MAX_QUEUED_BYTES:
            self._drop(
                "queue-full",
                "dropped chunk %d of blob %s: %d bytes wait to be written",
                index,
                short_hash(sha256),
                self._queued_bytes,
            )
            return True
        self._queued_bytes += len(payload)
        self._queue.put_nowait((sha256, index, payload))
        return True

    async def follow(self, client: aiomqtt.Client) -> None:
        """Subscribe to the chunks of the blob to fetch, for one connection.

        Each connection subscribes afresh, so the broker sends the
        retained chunks again after a reconnect.
        """
        # Retained messages go out on every subscription, unlike the
        # bundles' subscriptions, because a new subscription is how the box
        # requests a blob again.
        options = SubscribeOptions(
            qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
        )
        subscribed: str | None = None
        self._changed.set()
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                target = self._target()
                topic_filter = (
                    None if target is None else blob_filter(self._site, target.sha256)
                )
                if subscribed is not None and (
                    topic_filter != subscribed or self._resubscribe
                ):
                    self._requested = None
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.unsubscribe(subscribed)
                    subscribed = None
                self._resubscribe = False
                if target is None or subscribed is not None:
                    continue
                self._begin(target)
                subscribed = blob_filter(self._site, target.sha256)
                await client.subscribe(subscribed, options=options)
                self._requested = target.sha256
                _LOGGER.info(
                    "Requesting asset blob %s (%d bytes) from the upstream broker",
                    short_hash(target.sha256),
                    target.size,
                )
        finally:
            # The connection ended; a new one subscribes again.
            self._requested = None

    # Run by the cache.

    async def run(self) -> None:
        """Write queued chunks and hand complete blobs to the cache, until cancelled."""
        try:
            while True:
                await self._next_chunk()
        finally:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
                self._retry_timer = None

    async def _next_chunk(self) -> None:
        try:
            sha256, index, payload = await asyncio.wait_for(self._queue.get(), STALL_S)
        except TimeoutError:
            if self._assembly is not None and self._target() is not None:
                self._resubscribe = True
                self._changed.set()
            return
        self._queued_bytes -= len(payload)
        try:
            await self._write_chunk(sha256, index, payload)
        except OSError as err:
            self.counts["write-failed"] += 1
            _LOGGER.error(
                "Could not write chunk %d of asset blob %s: %s",
                index,
                short_hash(sha256),
                err,
            )

    async def _write_chunk(self, sha256: str, index: int, payload: bytes) -> None:
        assembly = self._assembly
        if assembly is None or assembly.entry.sha256 != sha256:
            self.counts["unrequested"] += 1
            return
        assembly.last_chunk_at = time.monotonic()
        if index in assembly.received:
            self.counts["repeated"] += 1
            return
        await asyncio.to_thread(_write_at, assembly.part, index * CHUNK_BYTES, payload)
        assembly.received.add(index)
        self.counts["chunks"] += 1
        if len(assembly.received) < assembly.count:
            return
        self._assembly = None
        entry = assembly.entry
        try:
            await self._cache.adopt_part(assembly.part, entry.sha256, entry.size)
        except BlobRejected:
            self._back_off(entry.sha256)
        except Exception as err:
            # BudgetExceeded, or a failure of the disk: the blob is asked
            # for again later, like a rejected one.
            self._back_off(entry.sha256)
            _LOGGER.warning(
                "Could not keep asset blob %s: %s", short_hash(entry.sha256), err
            )
        else:
            self.counts["blobs"] += 1
        self._changed.set()

    def _begin(self, target: AssetEntry) -> None:
        """Start assembling ``target``, keeping chunks already written for it."""
        current = self._assembly
        if current is not None and current.entry.sha256 == target.sha256:
            return
        if current is not None:
            _remove(current.part)
        part = self._cache.blobs.incoming_dir / f"{target.sha256}.part"
        _remove(part)
        self._assembly = _Assembly(target, part)

    def discard_parts(self) -> None:
        """Remove every part file, so a restart requests those blobs again."""
        self._assembly = None
        folder = self._cache.blobs.incoming_dir
        if folder.is_dir():
            for part in folder.iterdir():
                _remove(part)

    def _drop(self, reason: str, message: str, *args: Any) -> None:
        self.counts[reason] += 1
        self._log.warning(reason, "Asset delivery " + message, *args)


def _write_at(path: Path, offset: int, payload: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(descriptor, payload, offset)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
