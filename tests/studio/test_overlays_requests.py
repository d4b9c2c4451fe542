"""Overlay and clip text from creator stations: what is rejected, what is drawn.

One box streams the simulator at 320x180 for the whole module. Stations
reach it over its HTTP server and a real mosquitto. JSON allows a lone
UTF-16 surrogate (``"\\udfff"``), which has no UTF-8 form, so every front
must reject it before it reaches the store, an event or the state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from studio_site import (
    STATION,
    TIMEOUT_S,
    StudioBox,
    request,
    studio_box_fixture,  # noqa: F401 - registers the studio_box fixture
    wait_until,
)

from appliance.bus.client import Incoming
from appliance.errors import RequestError

pytestmark = pytest.mark.asyncio(loop_scope="module")

PUBLISH = "stream:publish"
ZWJ = "\u200d"
ZWNJ = "\u200c"


async def post_raw(sb: StudioBox, action: str, body: bytes) -> tuple[int, Any]:
    """POST ``body`` as it is to a stream control action; return status and JSON."""
    http = sb.studio.http
    assert http is not None
    url = f"http://127.0.0.1:{http.port}/stream/control/{action}"
    headers = {
        "Authorization": f"Bearer {sb.token(STATION, PUBLISH)}",
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def station_overlay(sb: StudioBox, data: dict[str, Any]) -> Any:
    """Send ``api/studio/overlay`` over the bus; return its data or RequestError."""
    token = sb.token(STATION, PUBLISH)
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:
        try:
            return await request(bus, "studio", "overlay", data, token)
        except RequestError as err:
            return err


def clip_files(sb: StudioBox) -> set[str]:
    return {path.name for path in sb.studio.clips_folder.glob("*.mp4")}


def clip_rows(sb: StudioBox) -> int:
    (count,) = sb.box.store.query_one("SELECT count(*) FROM clips")
    return int(count)


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("overlay", rb'{"message": "\udfff"}', "'message'"),
        ("overlay", rb'{"message": "ok \ud83c"}', "'message'"),
        ("clip", rb'{"note": "\ud800"}', "'note'"),
        ("drop-open", rb'{"drop": "\udfff"}', "'drop'"),
        ("overlay", rb'{"message": "hi", "\udfff": 1}', "'\\udfff'"),
    ],
)
async def test_lone_surrogate_rejected_over_http(
    studio_box: StudioBox, action: str, body: bytes, field: str
) -> None:
    sb = studio_box
    files, rows = clip_files(sb), clip_rows(sb)
    status, reply = await post_raw(sb, action, body)
    await sb.studio.wait_for_clips()

    assert status == 400
    assert reply["error"] == "rejected"
    assert field in reply["message"]
    assert "surrogate" in reply["message"]
    assert sb.studio.message is None
    assert clip_files(sb) == files
    assert clip_rows(sb) == rows
    orjson.dumps(sb.box.status())


async def test_lone_surrogate_rejected_on_bus(studio_box: StudioBox) -> None:
    sb = studio_box
    token = sb.token(STATION, PUBLISH)
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_reply(incoming: Incoming) -> None:
            replies.put_nowait(orjson.loads(incoming.payload))

        reply_topic = bus.topics.reply("terminal", STATION)
        bus.subscribe(reply_topic, on_reply)
        payload = (
            b'{"v": 1, "id": "surrogate-1", "ts": 1, "token": "%s", '
            b'"data": {"idempotency_key": "surrogate-key-1", "message": "\\udfff"}}'
            % token.encode()
        )
        await bus.publish(
            bus.topics.device_api("terminal", STATION, "studio", "overlay"),
            payload,
            response_topic=reply_topic,
            correlation=b"surrogate-1",
        )
        reply = await asyncio.wait_for(replies.get(), TIMEOUT_S)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "surrogate" in reply["error"]["message"]
    assert sb.studio.message is None


async def test_undrawable_characters_rejected(studio_box: StudioBox) -> None:
    sb = studio_box
    cases = {
        "\u6771\u4eac\u306e\u591c": "U+6771",
        "party \U0001f389": "U+1F389",
        "\uff37ide": "write 'W' in its place",
    }
    errors = {text: await station_overlay(sb, {"message": text}) for text in cases}
    rtl = await station_overlay(sb, {"message": "\u0645\u0631\u062d\u0628\u0627"})
    status, reply = await post_raw(sb, "overlay", b'{"message": "caf\\u00e9 \\u20ac5"}')

    for text, expected in cases.items():
        error = errors[text]
        assert isinstance(error, RequestError), text
        assert error.code == "invalid-request"
        assert "cannot draw" in error.message
        assert expected in error.message
    assert isinstance(rtl, RequestError)
    assert "U+0645" in rtl.message
    assert "right-to-left" in rtl.message
    assert status == 200
    assert reply["result"]["display"] == "shown"
    assert sb.studio.message == "caf\u00e9 \u20ac5"


async def test_joiners_allowed_in_message_and_note(studio_box: StudioBox) -> None:
    sb = studio_box
    message = f"Mi{ZWNJ}xed up{ZWJ}!"
    shown = await station_overlay(sb, {"message": message})
    await sb.studio.wait_for_clips()
    rows = clip_rows(sb)
    note = f"\U0001f469{ZWJ}\U0001f4bb live"
    await wait_until(lambda: sb.studio.stream.ring.duration_s >= 1.0, "camera video")
    status, reply = await post_raw(sb, "clip", orjson.dumps({"note": note}))
    hidden = await station_overlay(sb, {"hide": True})

    assert shown["display"] == "shown"
    assert shown["message"] == message
    assert shown["lines"] == ["Mixed up!"]
    assert status == 200, reply
    assert reply["result"]["note"] == note
    assert clip_rows(sb) == rows + 1
    assert hidden["display"] == "hidden"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"message": "a\u202eb"}, "U+202E"),
        ({"message": f"x{ZWJ}\u200b"}, "U+200B"),
        ({"message": f" {ZWJ}{ZWNJ} "}, "is empty"),
        ({"message": None}, "hide = true"),
        ({"message": "\U0001f469" * 121}, "121 characters (Unicode code points"),
    ],
)
async def test_message_rejected_with_reason(
    studio_box: StudioBox, data: dict[str, Any], expected: str
) -> None:
    sb = studio_box
    await station_overlay(sb, {"message": "Before"})
    error = await station_overlay(sb, data)

    assert isinstance(error, RequestError)
    assert error.code == "invalid-request"
    assert expected in error.message
    assert sb.studio.message == "Before"


async def status_after(statuses: asyncio.Queue[float], since: float) -> float:
    """Return the time of the first status published at ``since`` or later."""
    while True:
        published_at = await statuses.get()
        if published_at >= since:
            return published_at


async def test_status_survives_unencodable_state(
    studio_box: StudioBox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = studio_box
    statuses: asyncio.Queue[float] = asyncio.Queue()

    async def on_status(incoming: Incoming) -> None:
        statuses.put_nowait(orjson.loads(incoming.payload)["ts"])

    async with sb.client("terminal-console", "terminal", "console") as console:
        console.subscribe(console.topics.status("box", sb.config.box_id), on_status)
        await asyncio.wait_for(statuses.get(), TIMEOUT_S)
        with caplog.at_level(logging.ERROR, logger="appliance.runtime"):
            # The Python API takes the text unchecked, so the state that the
            # status carries has no JSON form until the message changes.
            sb.studio.show_message("\udfff")
            await wait_until(
                lambda: "Could not build the box status" in caplog.text,
                "the failed status publish logged",
            )
            sb.studio.show_message("Back")
            restored_at = time.time()
        after = await asyncio.wait_for(status_after(statuses, restored_at), TIMEOUT_S)
        sb.studio.show_message(None)

    failures = [r for r in caplog.records if "box status" in r.getMessage()]
    assert after >= restored_at
    assert len(failures) == 1
    assert failures[0].exc_info is not None
