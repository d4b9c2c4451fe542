"""What the box logs about a request it rejects.

A rejected request is logged with its topic and reason. Its payload may
hold a guest's email or a staff member's wellness note, in any field order,
so none of its bytes may reach the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
import pytest
from conftest import ClientFactory

from appliance.runtime import Box

TIMEOUT_S = 10.0
EMAIL = "rejected.guest@example.org"
NOTE = "guest near the bar felt faint"


def _data_first(topic_src: str, data: dict[str, object]) -> bytes:
    # A terminal may write "data" before the envelope's own fields; JSON
    # leaves the order to the sender.
    return orjson.dumps(
        {
            "data": data,
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": time.time(),
            "src": topic_src,
            "token": "not-a-token",
        }
    )


@pytest.mark.parametrize(
    ("action", "data", "secret"),
    [
        (
            "optin/register",
            {"email": EMAIL, "band": "ib-1-7", "consent": True},
            EMAIL,
        ),
        ("console/wellness-add", {"note": NOTE}, NOTE),
    ],
    ids=["contact", "wellness-note"],
)
async def test_rejected_request_payload_is_not_logged(
    box: Box,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    action: str,
    data: dict[str, object],
    secret: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    service, name = action.split("/")
    before = sum(box.bus.stats.rejected.values())
    async with make_client("terminal-desk", "terminal", "desk") as desk:
        # The desk's own request topic, which names it as the sender.
        topic = f"{desk.topics.prefix}/terminal/desk/api/{service}/{name}"
        await desk.publish(
            topic,
            _data_first("terminal/desk", {**data, "idempotency_key": "k-12345678"}),
            response_topic=desk.topics.reply("terminal", "desk"),
        )
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while sum(box.bus.stats.rejected.values()) == before:
            assert asyncio.get_running_loop().time() < deadline, "no rejection"
            await asyncio.sleep(0.02)

    rejected = [r for r in caplog.records if "Rejected message" in r.getMessage()]
    assert rejected, "the rejection is logged"
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert all(
        secret.encode() not in repr(record.args).encode() for record in caplog.records
    )
    assert "bytes" in rejected[0].getMessage()
