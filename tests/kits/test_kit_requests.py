"""Opt-ins, kit issues and coupons, requested over the bus from a running box.

The kit station logs in as ``reader-kit-1`` and the opt-in desk as
``terminal-desk``, each with its generated password, so every request also
passes mosquitto's ACLs. The desk also sends an edge token issued to "desk",
and the kit station, a reader, sends none. The test site has one kit station
with 5 kits.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE_UUID, ClientFactory, TokenFactory, make_site_config

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock
from appliance.commerce.config import CommerceConfig, PartnerOffer
from appliance.config import ReaderConfig, SiteConfig
from appliance.errors import RequestError
from appliance.kits import is_valid_coupon_code
from appliance.runtime import Box
from appliance.sim import _adverts
from provisioning import SiteCredentials

TIMEOUT_S = 10.0
EMAIL = "night.owl@example.org"
CONSENT = "Send me one follow-up offer after tonight."
STOCK = 5  # kit-1 in the test site
# A second kit station, which reader kit-1 must not hand out kits from.
TWO_STATIONS = {
    "readers": (
        ReaderConfig("exit-1", "exit"),
        ReaderConfig("kit-1", "kit", kit_stock=STOCK),
        ReaderConfig("kit-2", "kit", kit_stock=3),
    )
}

Predicate = Callable[[str, dict[str, Any]], bool]


@pytest.fixture
def site_config(tmp_path: Path, request: pytest.FixtureRequest) -> SiteConfig:
    """The test site with the changes that an indirect parametrisation passes."""
    changes: dict[str, Any] = getattr(request, "param", {})
    return make_site_config(tmp_path / "box", **changes)


@pytest.fixture
async def desk(make_client: ClientFactory) -> AsyncIterator[Bus]:
    async with make_client("terminal-desk", "terminal", "desk") as client:
        yield client


@pytest.fixture
def desk_token(issue_token: TokenFactory) -> str:
    """The desk's token, allowed to record opt-ins and hand out kits."""
    return issue_token("desk", "optin:register", "kits:issue")


@pytest.fixture
async def station(make_client: ClientFactory) -> AsyncIterator[Bus]:
    async with make_client("reader-kit-1", "reader", "kit-1") as client:
        yield client


def new_key() -> str:
    return str(uuid.uuid4())


async def opt_in(
    desk: Bus, token: str | None, band: str, key: str | None = None, **fields: Any
) -> Any:
    data: dict[str, Any] = {
        "band": band,
        "consent": True,
        "consent_text": CONSENT,
        "idempotency_key": key or new_key(),
    }
    data.update(fields if fields else {"email": EMAIL})
    topic = desk.topics.api("optin", "register")
    return await desk.request(topic, data, timeout_s=TIMEOUT_S, token=token)


async def issue_kit(
    client: Bus,
    band: str | None,
    key: str,
    station: str = "kit-1",
    token: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {"station": station, "idempotency_key": key, **fields}
    if band is not None:
        data["band"] = band
    topic = client.topics.api("kits", "issue")
    return await client.request(topic, data, timeout_s=TIMEOUT_S, token=token)


async def request_error(request: Awaitable[Any]) -> RequestError:
    """Await a request that must fail and return its RequestError."""
    with pytest.raises(RequestError) as caught:
        await request
    return caught.value


def band_advert(major: int, minor: int) -> bytes:
    return _adverts.ibeacon(SITE_UUID, major, minor, -59)


def remaining(box: Box) -> int:
    return box.kits.stock()["kit-1"]["remaining"]


def rows(box: Box, table: str) -> list[tuple[Any, ...]]:
    return box.store.query(f"SELECT * FROM {table}")


def stored_keys(box: Box) -> set[str]:
    return {row[0] for row in box.store.query("SELECT key FROM requests")}


class Inbox:
    """Every event an observer received, raw and decoded, with bounded waits."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        body = json.loads(incoming.payload)
        self.messages.append((incoming.topic, incoming.payload, body))
        self._arrived.set()

    def events(self, event_type: str) -> list[tuple[bytes, dict[str, Any]]]:
        suffix = f"/events/{event_type}"
        return [
            (raw, body) for topic, raw, body in self.messages if topic.endswith(suffix)
        ]

    async def wait_for_event(self, event_type: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not self.events(event_type):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [topic for topic, _raw, _body in self.messages]
            pytest.fail(f"no {event_type} event within {TIMEOUT_S} s; seen: {seen}")
        return self.events(event_type)[0][1]


@pytest.fixture
async def inbox(make_client: ClientFactory) -> AsyncIterator[Inbox]:
    received = Inbox()
    async with make_client(
        "observer", "observer", "kits", announce=False, wait=False
    ) as observer:
        observer.subscribe(observer.topics.all_events, received.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield received


async def test_optin_with_email(box: Box, desk: Bus, desk_token: str) -> None:
    reply = await opt_in(desk, desk_token, "ib-1-1", email=EMAIL)

    assert reply == {
        "band": "ib-1-1",
        "contact_kind": "email",
        "recorded": True,
        "coupon": None,
    }
    assert [row[:4] for row in rows(box, "optins")] == [
        ("ib-1-1", "email", EMAIL, CONSENT)
    ]


async def test_optin_with_wallet_id(box: Box, desk: Bus, desk_token: str) -> None:
    reply = await opt_in(desk, desk_token, "ib-1-2", wallet_id="wallet:000042")

    assert reply["contact_kind"] == "wallet"
    assert [row[:3] for row in rows(box, "optins")] == [
        ("ib-1-2", "wallet", "wallet:000042")
    ]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"consent": False, "email": EMAIL}, "consent"),
        ({"consent": None, "email": EMAIL}, "consent"),
        ({"consent_text": "", "email": EMAIL}, "consent_text"),
        ({"email": "night.owl@"}, "email"),
        ({"email": "night owl@example.org"}, "email"),
        ({"email": EMAIL, "wallet_id": "wallet:000042"}, "wallet_id"),
        ({"wallet_id": "w!"}, "wallet_id"),
    ],
    ids=[
        "consent-false",
        "consent-missing",
        "consent-text-empty",
        "email-no-domain",
        "email-space",
        "email-and-wallet",
        "wallet-bad",
    ],
)
async def test_optin_invalid_rejected(
    box: Box, desk: Bus, desk_token: str, fields: dict[str, Any], named: str
) -> None:
    key = new_key()
    data: dict[str, Any] = {
        "band": "ib-1-3",
        "consent": True,
        "consent_text": CONSENT,
        "idempotency_key": key,
    }
    data.update(fields)
    data = {name: value for name, value in data.items() if value is not None}

    error = await request_error(
        desk.request(desk.topics.api("optin", "register"), data, token=desk_token)
    )

    assert error.code == "invalid-request"
    assert named in error.message
    # Rejected requests are logged with their message, so a contact the
    # guest mistyped is never repeated in it.
    for contact_field in ("email", "wallet_id"):
        if isinstance(fields.get(contact_field), str):
            assert fields[contact_field] not in error.message
    assert rows(box, "optins") == []
    assert key not in stored_keys(box)


async def test_optin_invalid_answer_not_stored(
    box: Box, desk: Bus, desk_token: str
) -> None:
    # A malformed request changed nothing, so the same key may be used
    # again once the desk has fixed the input.
    key = new_key()
    error = await request_error(
        opt_in(desk, desk_token, "ib-1-4", key, email="not-an-address")
    )
    fixed = await opt_in(desk, desk_token, "ib-1-4", key, email=EMAIL)

    assert error.code == "invalid-request"
    assert fixed["recorded"] is True
    assert key in stored_keys(box)


async def test_optin_without_token_rejected(
    box: Box, desk: Bus, desk_token: str
) -> None:
    key = new_key()

    error = await request_error(opt_in(desk, None, "ib-1-20", key))
    optins_after_reject = rows(box, "optins")
    keys_after_reject = stored_keys(box)
    # The rejection is not stored, so the same key works once the token is sent.
    fixed = await opt_in(desk, desk_token, "ib-1-20", key)

    assert error.code == "token-missing"
    assert error.details["reason"] == "missing"
    assert optins_after_reject == []
    assert keys_after_reject == set()
    assert box.requests.counts["token-missing"] == 1
    assert fixed["recorded"] is True
    assert box.store.query(
        "SELECT COUNT(*) FROM outbox WHERE type = 'optin_recorded'"
    ) == [(1,)]


async def test_kit_issued_once(box: Box, station: Bus) -> None:
    first = await issue_kit(station, "ib-1-5", new_key())
    second = await request_error(issue_kit(station, "ib-1-5", new_key()))

    assert first == {
        "band": "ib-1-5",
        "station": "kit-1",
        "remaining": 4,
        "coupon": None,
    }
    assert second.code == "already-issued"
    assert "ib-1-5" in second.message
    assert remaining(box) == STOCK - 1
    assert len(rows(box, "kits")) == 1


async def test_kit_retry_same_answer(
    box: Box, desk: Bus, desk_token: str, station: Bus
) -> None:
    await opt_in(desk, desk_token, "ib-1-6")
    key = new_key()

    first = await issue_kit(station, "ib-1-6", key)
    retry = await issue_kit(station, "ib-1-6", key)

    assert first["coupon"] is not None
    assert retry == first
    assert retry["coupon"]["code"] == first["coupon"]["code"]
    assert remaining(box) == STOCK - 1
    assert len(rows(box, "kits")) == 1
    assert len(rows(box, "coupons")) == 1
    assert box.requests.counts["replayed"] == 1


async def test_kit_out_of_stock_stored(box: Box, station: Bus) -> None:
    for minor in range(STOCK):
        await issue_kit(station, f"ib-2-{minor}", new_key())
    key = new_key()

    empty = await request_error(issue_kit(station, "ib-2-99", key))
    # Restock directly in the store. The stored refusal must not change.
    with box.store.transaction() as transaction:
        transaction.execute("UPDATE kit_stock SET remaining = 2")
    again = await request_error(issue_kit(station, "ib-2-99", key))
    fresh = await issue_kit(station, "ib-2-99", new_key())

    assert empty.code == "out-of-stock"
    assert again.code == "out-of-stock"
    assert again.message == empty.message
    assert fresh["remaining"] == 1
    assert len(rows(box, "kits")) == STOCK + 1


async def test_coupon_for_email_optin(
    box: Box, site_config: SiteConfig, desk: Bus, desk_token: str, station: Bus
) -> None:
    await opt_in(desk, desk_token, "ib-1-8", email=EMAIL)

    before = time.time()
    reply = await issue_kit(station, "ib-1-8", new_key())
    after = time.time()

    coupon = reply["coupon"]
    assert is_valid_coupon_code(coupon["code"])
    assert coupon["offer"] == site_config.coupon_offer
    assert before + site_config.coupon_ttl_s - 0.001 <= coupon["expires_at"]
    assert coupon["expires_at"] <= after + site_config.coupon_ttl_s + 0.001
    stored = box.store.query(
        "SELECT code, band, contact_kind, contact, offer, issued_at, expires_at"
        " FROM coupons"
    )
    assert len(stored) == 1
    code, band, kind, contact, offer, issued_at, expires_at = stored[0]
    assert (code, band, kind, contact) == (coupon["code"], "ib-1-8", "email", EMAIL)
    assert offer == site_config.coupon_offer
    assert expires_at == pytest.approx(issued_at + site_config.coupon_ttl_s)
    assert before <= issued_at <= after


async def test_coupon_for_wallet_optin(
    box: Box, desk: Bus, desk_token: str, station: Bus
) -> None:
    await opt_in(desk, desk_token, "ib-1-9", wallet_id="wallet:000009")

    reply = await issue_kit(station, "ib-1-9", new_key())

    assert is_valid_coupon_code(reply["coupon"]["code"])
    assert box.store.query("SELECT contact_kind, contact FROM coupons") == [
        ("wallet", "wallet:000009")
    ]


async def test_no_coupon_without_optin(
    box: Box, desk: Bus, desk_token: str, station: Bus
) -> None:
    await opt_in(desk, desk_token, "ib-1-10")

    reply = await issue_kit(station, "ib-1-11", new_key())

    assert reply["coupon"] is None
    assert rows(box, "coupons") == []


async def test_optin_after_kit_issues_coupon(
    box: Box, site_config: SiteConfig, desk: Bus, desk_token: str, station: Bus
) -> None:
    kit = await issue_kit(station, "ib-1-14", new_key())
    key = new_key()

    before = time.time()
    reply = await opt_in(desk, desk_token, "ib-1-14", key, email=EMAIL)
    after = time.time()
    again = await opt_in(desk, desk_token, "ib-1-14", key, email=EMAIL)

    assert kit["coupon"] is None
    coupon = reply["coupon"]
    assert is_valid_coupon_code(coupon["code"])
    assert coupon["offer"] == site_config.coupon_offer
    assert before + site_config.coupon_ttl_s - 0.001 <= coupon["expires_at"]
    assert coupon["expires_at"] <= after + site_config.coupon_ttl_s + 0.001
    # A retry of the same opt-in gets the same coupon, not a second one.
    assert again == reply
    assert box.store.query(
        "SELECT code, band, contact_kind, contact, offer FROM coupons"
    ) == [(coupon["code"], "ib-1-14", "email", EMAIL, site_config.coupon_offer)]


async def test_optin_again_after_coupon_issues_none(
    box: Box, desk: Bus, desk_token: str, station: Bus
) -> None:
    await opt_in(desk, desk_token, "ib-1-15", email=EMAIL)
    kit = await issue_kit(station, "ib-1-15", new_key())

    reply = await opt_in(desk, desk_token, "ib-1-15", wallet_id="wallet:000015")

    assert is_valid_coupon_code(kit["coupon"]["code"])
    assert reply["coupon"] is None
    assert [row[0] for row in rows(box, "coupons")] == [kit["coupon"]["code"]]


async def test_optin_after_kit_emits_coupon_event(
    box: Box, desk: Bus, desk_token: str, station: Bus, inbox: Inbox
) -> None:
    await issue_kit(station, "ib-1-16", new_key())
    reply = await opt_in(desk, desk_token, "ib-1-16", email=EMAIL)

    event = await inbox.wait_for_event("coupon_issued")

    assert event["data"]["band"] == "ib-1-16"
    assert event["data"]["code"] == reply["coupon"]["code"]
    assert event["data"]["contact_kind"] == "email"
    for raw, _body in inbox.events("coupon_issued"):
        assert EMAIL.encode() not in raw


@pytest.mark.parametrize(
    "site_config",
    [
        {
            "commerce": CommerceConfig(
                partner_offers=(
                    PartnerOffer(
                        "hotel", "Hotel Nord", "A night at Hotel Nord", ("HOTEL-001",)
                    ),
                )
            )
        }
    ],
    indirect=True,
)
async def test_optin_after_kit_hands_out_partner_code(
    box: Box, desk: Bus, desk_token: str, station: Bus
) -> None:
    await issue_kit(station, "ib-1-17", new_key())
    await issue_kit(station, "ib-1-18", new_key())

    first = await opt_in(desk, desk_token, "ib-1-17", email=EMAIL)
    second = await opt_in(desk, desk_token, "ib-1-18", email="other@example.org")

    assert first["coupon"]["code"] == "HOTEL-001"
    assert first["coupon"]["partner"] == "Hotel Nord"
    assert first["coupon"]["offer"] == "A night at Hotel Nord"
    # The pool is empty, so the next guest gets the site's own coupon.
    assert is_valid_coupon_code(second["coupon"]["code"])
    assert "partner" not in second["coupon"]


async def test_events_never_contain_email(
    box: Box, desk: Bus, desk_token: str, station: Bus, inbox: Inbox
) -> None:
    await opt_in(desk, desk_token, "ib-1-12", email=EMAIL)
    await issue_kit(station, "ib-1-12", new_key())

    optin = await inbox.wait_for_event("optin_recorded")
    coupon = await inbox.wait_for_event("coupon_issued")
    await inbox.wait_for_event("kit_issued")

    assert optin["data"] == {"band": "ib-1-12", "contact_kind": "email"}
    assert coupon["data"]["contact_kind"] == "email"
    assert "contact" not in coupon["data"]
    for event_type in ("optin_recorded", "coupon_issued", "kit_issued"):
        for raw, _body in inbox.events(event_type):
            assert EMAIL.encode() not in raw
            assert b"night.owl" not in raw


async def send_with_deadline(
    station: Bus, band: str, deadline: float
) -> dict[str, Any]:
    """Send a kit request carrying ``deadline`` and return the reply body."""
    correlation = uuid.uuid4().bytes
    reply_topic = station.topics.reply("reader", "kit-1")
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_reply(incoming: Incoming) -> None:
        if incoming.correlation == correlation:
            await replies.put(envelope.decode(incoming.payload).body)

    # This handler takes over the client's reply topic, so the test sends
    # the request itself with the deadline it wants.
    station.subscribe(reply_topic, on_reply)
    body = {
        "data": {"band": band, "station": "kit-1", "idempotency_key": new_key()},
        "deadline": round(deadline, 3),
    }
    await station.publish(
        station.topics.device_api("reader", "kit-1", "kits", "issue"),
        envelope.encode(station.settings.src, body),
        response_topic=reply_topic,
        correlation=correlation,
        timeout_s=TIMEOUT_S,
    )
    return await asyncio.wait_for(replies.get(), TIMEOUT_S)


async def test_request_past_deadline(box: Box, station: Bus) -> None:
    # Ten seconds is well past the two-second skew allowance.
    reply = await send_with_deadline(station, "ib-1-13", time.time() - 10.0)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "deadline-exceeded"
    assert rows(box, "kits") == []
    assert remaining(box) == STOCK
    assert stored_keys(box) == set()


async def test_deadline_within_skew_allowance(box: Box, station: Bus) -> None:
    reply = await send_with_deadline(station, "ib-1-14", time.time() - 1.0)

    assert reply["ok"] is True
    assert remaining(box) == STOCK - 1


async def test_deadline_ignored_untrusted_clock(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    station: Bus,
) -> None:
    # A box whose clock nothing has vouched for cannot tell a late request
    # from its own wrong time, so it serves the request.
    async with Box(
        site_config, SystemClock(), credentials, mosquitto.host, mosquitto.port
    ) as untrusted:
        await asyncio.wait_for(untrusted.bus.connected.wait(), TIMEOUT_S)
        await asyncio.sleep(0.2)  # the box's subscriptions go out on connect
        reply = await send_with_deadline(station, "ib-1-15", time.time() - 3600.0)

    assert reply["ok"] is True
    assert reply["data"]["band"] == "ib-1-15"


async def test_key_reused_other_action(box: Box, desk: Bus, desk_token: str) -> None:
    key = new_key()
    await opt_in(desk, desk_token, "ib-1-14", key)

    error = await request_error(issue_kit(desk, "ib-1-14", key, token=desk_token))

    assert error.code == "idempotency-key-reused"
    assert "optin/register" in error.message
    assert rows(box, "kits") == []
    assert remaining(box) == STOCK


@pytest.mark.parametrize(
    "site_config", [{"kits_require_checkout": True}], indirect=True, ids=["required"]
)
async def test_kit_requires_checkout(
    box: Box, station: Bus, make_client: ClientFactory, inbox: Inbox
) -> None:
    key = new_key()
    before = await request_error(issue_kit(station, "ib-1-7", key))

    async with make_client("reader-exit-1", "reader", "exit-1") as exit_1:
        start_s = time.time()
        for seq in range(1, 4):
            t = round(start_s + 0.5 * seq, 3)
            sighting = {"t": t, "rssi": -55, "n": 2, "adv": band_advert(1, 7).hex()}
            batch = {"boot": "boot-a", "seq": seq, "t": t, "sightings": [sighting]}
            await exit_1.publish_json(
                exit_1.topics.sightings("exit-1"), {"data": batch}
            )
        checkout = await inbox.wait_for_event("checkout")

    stored = await request_error(issue_kit(station, "ib-1-7", key))
    after = await issue_kit(station, "ib-1-7", new_key())

    assert before.code == "not-checked-out"
    assert checkout["data"]["band"] == "ib-1-7"
    assert stored.code == "not-checked-out"
    assert after["band"] == "ib-1-7"
    assert remaining(box) == STOCK - 1


async def test_kit_by_advert(box: Box, station: Bus) -> None:
    reply = await issue_kit(station, None, new_key(), adv=band_advert(3, 4).hex())

    assert reply["band"] == "ib-3-4"
    assert [row[0] for row in rows(box, "kits")] == ["ib-3-4"]


async def test_kit_by_foreign_advert(box: Box, station: Bus) -> None:
    phone = "02011a020a050aff4c0010050a1c77f95b"

    error = await request_error(issue_kit(station, None, new_key(), adv=phone))

    assert error.code == "invalid-request"
    assert "adv" in error.message
    assert rows(box, "kits") == []


@pytest.mark.parametrize("named", ["kit-9", "exit-1", ""])
async def test_kit_unknown_station(box: Box, station: Bus, named: str) -> None:
    error = await request_error(issue_kit(station, "ib-1-15", new_key(), station=named))

    assert error.code == "invalid-request"
    assert "station" in error.message
    assert rows(box, "kits") == []
    assert remaining(box) == STOCK


@pytest.mark.parametrize("site_config", [TWO_STATIONS], indirect=True, ids=["two"])
async def test_kit_reader_other_station_rejected(box: Box, station: Bus) -> None:
    key = new_key()

    error = await request_error(issue_kit(station, "ib-1-21", key, station="kit-2"))

    assert error.code == "invalid-request"
    assert "only from its own stock" in error.message
    assert "'kit-2'" in error.message
    assert rows(box, "kits") == []
    assert box.kits.stock() == {
        "kit-1": {"initial": STOCK, "remaining": STOCK},
        "kit-2": {"initial": 3, "remaining": 3},
    }
    assert key not in stored_keys(box)


async def test_kit_token_without_scope_rejected(
    box: Box, desk: Bus, issue_token: TokenFactory
) -> None:
    optin_only = issue_token("desk", "optin:register")
    key = new_key()

    error = await request_error(issue_kit(desk, "ib-1-22", key, token=optin_only))

    assert error.code == "token-wrong-scope"
    assert "'kits:issue'" in error.message
    assert rows(box, "kits") == []
    assert remaining(box) == STOCK
    assert key not in stored_keys(box)
    assert box.requests.counts["token-wrong-scope"] == 1


async def test_deadline_not_a_time(box: Box, station: Bus) -> None:
    correlation = uuid.uuid4().bytes
    reply_topic = station.topics.reply("reader", "kit-1")
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_reply(incoming: Incoming) -> None:
        if incoming.correlation == correlation:
            await replies.put(envelope.decode(incoming.payload).body)

    station.subscribe(reply_topic, on_reply)
    body = {
        "data": {"band": "ib-1-16", "station": "kit-1", "idempotency_key": new_key()},
        "deadline": "soon",
    }
    await station.publish(
        station.topics.device_api("reader", "kit-1", "kits", "issue"),
        envelope.encode(station.settings.src, body),
        response_topic=reply_topic,
        correlation=correlation,
        timeout_s=TIMEOUT_S,
    )
    reply = await asyncio.wait_for(replies.get(), TIMEOUT_S)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "'deadline'" in reply["error"]["message"]
    assert remaining(box) == STOCK


async def test_band_and_advert_rejected(box: Box, station: Bus) -> None:
    advert = _adverts.ibeacon(SITE_UUID, 1, 17, -59).hex()
    data = {"band": "ib-1-18", "adv": advert, "station": "kit-1"}

    with pytest.raises(RequestError) as caught:
        await station.request(
            station.topics.api("kits", "issue"),
            dict(data, idempotency_key=new_key()),
            timeout_s=TIMEOUT_S,
        )

    assert caught.value.code == "invalid-request"
    assert "exactly one of 'band' or 'adv'" in caught.value.message
    assert remaining(box) == STOCK
