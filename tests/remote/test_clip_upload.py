"""Clip uploads through SyncService to a TLS mosquitto as the upstream broker.

Each test runs the sync service on a real store with the studio's clip
table (``ClipStore``) and a fresh upstream broker. A receiver logged in as
the fleet operator, with a persistent session, records every event, chunk
and manifest the box sends, and rebuilds each clip from its chunks'
offsets. The clip files hold random bytes: the upload does not look inside.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_sync import (
    TIMEOUT_S,
    emit_events,
    local_bus,  # noqa: F401
    running,
    wait_until,
)
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus
from appliance.bus.topics import Topics
from appliance.bus.url import client_tls_context
from appliance.clock import SystemClock
from appliance.config import SiteConfig
from appliance.remote._clip_upload import CHUNK_BYTES, MAX_CHUNKS_IN_FLIGHT
from appliance.remote.sync import SyncService
from appliance.store import Store
from appliance.studio._store import ClipRecord, ClipStore

SITE = "club"
BOX = "box-1"
TOPICS = Topics(SITE)
CHUNK_TOPIC = TOPICS.box_topic(BOX, "clips/chunk")
MANIFEST_TOPIC = TOPICS.box_topic(BOX, "clips/manifest")


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    """The test site as box ``club/box-1`` of the upstream broker's fleet."""
    return fleet_site_config(tmp_path / "box", upstream)


@pytest.fixture
def store(site_config: SiteConfig) -> Iterator[Store]:
    opened = Store(site_config.data_dir / "nightbox.sqlite3", SystemClock())
    yield opened
    opened.close()


@pytest.fixture
def clips(store: Store) -> ClipStore:
    return ClipStore(store, SystemClock(), keep=50)


@dataclass(frozen=True)
class Received:
    """One message as the receiver got it."""

    topic: str
    payload: bytes
    user_properties: dict[str, str]


class Receiver:
    """The operator's client on the upstream broker, recording in arrival order.

    ``on_message`` runs for every message before it is recorded, so a test
    can act at an exact point of an upload.
    """

    def __init__(self, fleet: Upstream) -> None:
        self._upstream = fleet
        self._login = json.loads(fleet.operator_credentials().read_text())
        self.messages: list[Received] = []
        self.connected = asyncio.Event()
        self.on_message: Callable[[Received], None] = lambda _message: None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Receiver:
        self._task = asyncio.create_task(self._run())
        await wait_until(self.connected.is_set, "the receiver's connection")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self._upstream.broker.port,
                    username=self._login["username"],
                    password=self._login["password"],
                    identifier="test-clip-receiver",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=properties,
                    tls_context=client_tls_context(self._upstream.ca.ca_certificate),
                ) as client:
                    await client.subscribe(TOPICS.box_topic(BOX, "clips/+"), qos=1)
                    await client.subscribe(TOPICS.box_topic(BOX, "events/#"), qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        self._record(message)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    def _record(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        assert isinstance(payload, bytes)
        pairs = getattr(message.properties, "UserProperty", None) or []
        received = Received(message.topic.value, payload, dict(pairs))
        self.on_message(received)
        self.messages.append(received)

    def chunks(self, clip_id: str) -> list[Received]:
        return [
            m
            for m in self.messages
            if m.topic == CHUNK_TOPIC and m.user_properties.get("clip") == clip_id
        ]

    def manifests(self) -> list[dict[str, object]]:
        return [
            envelope.decode(m.payload).data
            for m in self.messages
            if m.topic == MANIFEST_TOPIC
        ]

    def rebuild(self, clip_id: str, size: int) -> bytes:
        """Return the clip put together from its chunks by offset."""
        data = bytearray(size)
        for chunk in self.chunks(clip_id):
            offset = int(chunk.user_properties["offset"])
            data[offset : offset + len(chunk.payload)] = chunk.payload
        return bytes(data)

    def event_ids(self) -> list[str]:
        return [
            orjson.loads(m.payload)["id"]
            for m in self.messages
            if "/events/" in m.topic
        ]


def queue_clip(store: Store, clips: ClipStore, folder: Path, size: int) -> ClipRecord:
    """Write a clip file of ``size`` random bytes and queue it for upload."""
    folder.mkdir(parents=True, exist_ok=True)
    clip_id = uuid.uuid4().hex
    path = folder / f"{clip_id}.mp4"
    data = os.urandom(size)
    path.write_bytes(data)
    record = ClipRecord(
        id=clip_id,
        path=path,
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=SystemClock().now(),
        trigger="button",
        set_id=None,
        duration_s=12.5,
    )
    with store.transaction() as transaction:
        clips.record(transaction, record)
    clips.queued()
    return record


async def test_clip_arrives_complete(
    site_config: SiteConfig,
    store: Store,
    clips: ClipStore,
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> None:
    size = 5 * CHUNK_BYTES + 1234
    async with (
        Receiver(upstream) as receiver,
        running(site_config, store, local_bus) as service,
    ):
        # Attached and queued while connected: the store's wake starts it.
        await wait_until(lambda: service.connected, "the sync connection")
        service.attach_clip_uploads(clips)
        clip = queue_clip(store, clips, site_config.data_dir / "clips", size)
        await wait_until(lambda: not clips.pending_uploads(), "the clip uploaded")
        await wait_until(lambda: receiver.manifests(), "the clip's manifest")
        state = service.state()

    chunks = receiver.chunks(clip.id)
    indexes = sorted({int(c.user_properties["chunk"]) for c in chunks})
    assert indexes == list(range(6))
    assert {c.user_properties["chunks"] for c in chunks} == {"6"}
    assert {c.user_properties["size"] for c in chunks} == {str(size)}
    rebuilt = receiver.rebuild(clip.id, size)
    assert hashlib.sha256(rebuilt).hexdigest() == clip.sha256
    assert rebuilt == clip.path.read_bytes()

    [manifest] = receiver.manifests()
    assert manifest["clip"] == clip.id
    assert manifest["size"] == size
    assert manifest["sha256"] == clip.sha256
    assert manifest["chunks"] == 6
    assert manifest["chunk_bytes"] == CHUNK_BYTES
    assert manifest["trigger"] == "button"
    assert manifest["duration_s"] == 12.5
    # The manifest follows the last chunk, so a receiver can check the whole.
    last_chunk = max(
        i for i, m in enumerate(receiver.messages) if m.topic == CHUNK_TOPIC
    )
    manifest_at = next(
        i for i, m in enumerate(receiver.messages) if m.topic == MANIFEST_TOPIC
    )
    assert manifest_at > last_chunk

    row = store.query_one("SELECT uploaded_at FROM clips WHERE id = ?", (clip.id,))
    assert row is not None and row[0] is not None
    assert state["clips"]["uploaded"] == 1
    assert state["clips"]["bytes_sent"] == size
    assert state["clips"]["uploading"] == []


async def chunks_published(service: SyncService, count: int) -> int:
    """Return the chunks published once at least ``count`` were, checking often.

    The check runs on every turn of the event loop, and the uploader needs
    at least two turns per chunk (a file read in a worker thread), so it
    returns with the upload still in its middle.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while True:
        published = service.state()["clips"]["bytes_sent"] // CHUNK_BYTES
        if published >= count:
            return int(published)
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {count} chunks to be published")
        await asyncio.sleep(0)


async def test_events_go_before_clip_chunks(
    site_config: SiteConfig,
    store: Store,
    clips: ClipStore,
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> None:
    chunk_count = 32
    backlog = emit_events(store, 2000)
    clip = queue_clip(
        store, clips, site_config.data_dir / "clips", chunk_count * CHUNK_BYTES
    )

    async with (
        Receiver(upstream) as receiver,
        running(site_config, store, local_bus) as service,
    ):
        service.attach_clip_uploads(clips)
        published = await chunks_published(service, 8)
        late = [event.id for event in emit_events(store, 200)]
        await wait_until(lambda: not clips.pending_uploads(), "the clip uploaded")
        await wait_until(lambda: receiver.manifests(), "the clip's manifest")
        await wait_until(
            lambda: len(set(receiver.event_ids())) == 2000 + 1 + len(late),
            "every event at the receiver",
        )

    topics = [m.topic for m in receiver.messages]
    first_chunk = topics.index(CHUNK_TOPIC)
    # The backlog and the clip_written event were committed before the
    # upload started, so all of them precede the first chunk.
    before_first_chunk = {
        orjson.loads(m.payload)["id"]
        for m in receiver.messages[:first_chunk]
        if "/events/" in m.topic
    }
    assert {event.id for event in backlog} <= before_first_chunk
    assert any("/events/clip_written" in topic for topic in topics[:first_chunk])
    # Events committed mid-upload go before the rest of the clip: at most
    # the chunk being published at the commit slips in before them.
    assert published < chunk_count - 2
    late_ids = set(late)
    last_late = max(
        i
        for i, m in enumerate(receiver.messages)
        if "/events/" in m.topic and orjson.loads(m.payload)["id"] in late_ids
    )
    chunks_before_late = {
        int(m.user_properties["chunk"])
        for m in receiver.messages[:last_late]
        if m.topic == CHUNK_TOPIC
    }
    assert max(chunks_before_late) <= published
    assert topics.index(MANIFEST_TOPIC) > last_late
    rebuilt = receiver.rebuild(clip.id, clip.size)
    assert hashlib.sha256(rebuilt).hexdigest() == clip.sha256


async def test_clip_upload_resumes_after_disconnect(
    site_config: SiteConfig,
    store: Store,
    clips: ClipStore,
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> None:
    chunk_count = 32
    clip = queue_clip(
        store, clips, site_config.data_dir / "clips", chunk_count * CHUNK_BYTES
    )
    process = upstream.broker._process
    assert process is not None

    async with (
        Receiver(upstream) as receiver,
        running(site_config, store, local_bus) as service,
    ):
        service.attach_clip_uploads(clips)
        published = await chunks_published(service, 8)
        # Stopping the broker's process keeps the upload in its middle,
        # because no PUBACK reaches the box any more.
        os.kill(process.pid, signal.SIGSTOP)
        during = service.state()["clips"]
        # A clean stop lets mosquitto save the receiver's queued chunks.
        os.kill(process.pid, signal.SIGTERM)
        os.kill(process.pid, signal.SIGCONT)
        await upstream.broker.restart()
        await wait_until(lambda: not clips.pending_uploads(), "the clip uploaded")
        await wait_until(lambda: receiver.manifests(), "the clip's manifest")
        state = service.state()

    assert published < chunk_count
    assert during["uploaded"] == 0
    assert during["uploading"] == [clip.id]
    assert state["counts"]["connects"] >= 2
    assert state["clips"]["uploaded"] == 1
    # At most MAX_CHUNKS_IN_FLIGHT chunks lacked their PUBACK at the
    # disconnect, and only those go again. A restart from chunk 0 would
    # send all of the (at least 8) published chunks again.
    resent = state["clips"]["bytes_sent"] - clip.size
    assert 0 <= resent <= MAX_CHUNKS_IN_FLIGHT * CHUNK_BYTES
    indexes = {int(c.user_properties["chunk"]) for c in receiver.chunks(clip.id)}
    assert indexes == set(range(chunk_count))
    rebuilt = receiver.rebuild(clip.id, clip.size)
    assert hashlib.sha256(rebuilt).hexdigest() == clip.sha256
    [manifest] = receiver.manifests()
    assert manifest["sha256"] == clip.sha256


async def test_changed_clip_file_not_uploaded(
    site_config: SiteConfig,
    store: Store,
    clips: ClipStore,
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = site_config.data_dir / "clips"
    damaged = queue_clip(store, clips, folder, 3 * CHUNK_BYTES)
    damaged.path.write_bytes(b"\x00" * 100)
    intact = queue_clip(store, clips, folder, 2 * CHUNK_BYTES + 7)

    async with (
        Receiver(upstream) as receiver,
        running(site_config, store, local_bus) as service,
    ):
        service.attach_clip_uploads(clips)
        await wait_until(
            lambda: [c.id for c in clips.pending_uploads()] == [damaged.id],
            "the intact clip uploaded",
        )
        await wait_until(lambda: receiver.manifests(), "the intact clip's manifest")
        state = service.state()

    assert [m["clip"] for m in receiver.manifests()] == [intact.id]
    assert receiver.chunks(damaged.id) == []
    assert state["clips"]["unsendable"] == 1
    assert state["connected"] is True
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(damaged.id in e and "100 bytes" in e for e in errors)
