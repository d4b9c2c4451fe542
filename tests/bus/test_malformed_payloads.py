"""Malformed payloads on every topic the box subscribes to.

Each test sends a storm of bad messages through a real mosquitto. Then it
checks that the box is still running and counted every reject. It also checks
that every request with a response topic got a reply, that nothing was
stored, and that a valid kit request still succeeds.

The storm is published with the box's own account, the only one allowed to
write every topic the box subscribes to, so one client delivers all of it
in order. Its requests go on its own request topic ``box/storm/api/...``,
name its own reply topic and carry an edge token issued to its device id
"storm" with every scope, so a request fails only on the fault it was built
with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from conftest import TokenFactory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.checkout._batches import MAX_SIGHTINGS_PER_BATCH
from appliance.commerce.config import MAX_AMOUNT
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from appliance.tokens import SCOPES

TIMEOUT_S = 10.0
STORM_REPLY_TOPIC = "nightbox/test/box/storm/reply"
STORM_KITS_TOPIC = "nightbox/test/box/storm/api/kits/issue"
OVERSIZE_BYTES = envelope.MAX_PAYLOAD_BYTES + 1024
SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")
ADVERT_HEX = ibeacon(SITE_UUID, 1, 7, -59).hex()
# The test site configures no drops, partner offers or promo codes, so
# every one of these tables starts empty.
DOMAIN_TABLES = (
    "checkouts",
    "kits",
    "optins",
    "coupons",
    "requests",
    "wallets",
    "ledger_transactions",
    "ledger_entries",
    "drops",
    "drop_claims",
    "drop_holdings",
    "partner_codes",
    "revoked_tokens",
)
# Short enough that 2001 of them stay under the payload size limit.
TINY_SIGHTING = {"t": 1, "rssi": -90, "adv": "00"}


class Storm:
    """A client that publishes raw payloads and collects the box's replies."""

    def __init__(self, bus: Bus, replies: asyncio.Queue[Incoming]) -> None:
        self.bus = bus
        self.replies = replies

    async def send(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` at QoS 1 without a response topic."""
        await asyncio.wait_for(self.bus.publish(topic, payload), TIMEOUT_S)

    async def request(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Publish ``payload`` as a request and return the reply's body."""
        correlation = uuid.uuid4().bytes
        await asyncio.wait_for(
            self.bus.publish(
                topic,
                payload,
                response_topic=STORM_REPLY_TOPIC,
                correlation=correlation,
            ),
            TIMEOUT_S,
        )
        reply = await asyncio.wait_for(self.replies.get(), TIMEOUT_S)
        assert reply.correlation == correlation
        return envelope.decode(reply.payload).body

    async def sync(self) -> None:
        """Wait until the box has handled every message sent before.

        The box handles messages in arrival order, and a request whose
        deadline has passed gets a ``deadline-exceeded`` reply that changes
        nothing and counts no reject.
        """
        body = await self.request(
            STORM_KITS_TOPIC,
            envelope.encode("box/storm", {"data": {}, "deadline": 1.0}),
        )
        assert body["error"]["code"] == "deadline-exceeded"


@pytest.fixture
def storm_token(issue_token: TokenFactory) -> str:
    """A token of the storm client with every scope."""
    return issue_token("storm", *SCOPES)


@contextlib.asynccontextmanager
async def storm_client(make_client: Any) -> AsyncIterator[Storm]:
    """Connect the storm client with its reply subscription in place."""
    replies: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_reply(incoming: Incoming) -> None:
        replies.put_nowait(incoming)

    async with make_client(
        "box-box-1", "box", "storm", announce=False, wait=False
    ) as bus:
        bus.subscribe(STORM_REPLY_TOPIC, on_reply)
        await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
        yield Storm(bus, replies)


def wrap(data: Any, **fields: Any) -> bytes:
    """Return an envelope around ``data``, with ``fields`` overriding the rest.

    ``allow_nan`` stays on, so NaN and Infinity reach the box as the bare
    tokens that Python's json module reads back.
    """
    body = {"v": 1, "id": str(uuid.uuid4()), "ts": time.time(), "src": "box/storm"}
    body["data"] = data
    body.update(fields)
    return json.dumps(body, separators=(",", ":")).encode()


def nested(depth: int) -> str:
    """Return JSON arrays nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def sighting(**changes: Any) -> dict[str, Any]:
    """Return a weak, valid sighting of band ib-1-7 with ``changes`` applied."""
    item: dict[str, Any] = {
        "t": time.time(),
        "addr": "c4:7c:8d:6a:11:07",
        "rssi": -90,
        "n": 1,
        "adv": ADVERT_HEX,
    }
    item.update(changes)
    return item


def batch(seq: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a valid batch of reader exit-1 with ``changes`` applied."""
    data: dict[str, Any] = {
        "reader": "exit-1",
        "boot": "storm",
        "seq": seq,
        "t": time.time(),
        "heard": 1,
        "sightings": [sighting()],
    }
    data.update(changes)
    return data


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    """Return ``data`` without ``key``."""
    return {name: value for name, value in data.items() if name != key}


def kit_data(**changes: Any) -> dict[str, Any]:
    """Return a valid kit request with ``changes`` applied."""
    data: dict[str, Any] = {
        "station": "kit-1",
        "band": "ib-1-7",
        "idempotency_key": f"storm-{uuid.uuid4()}",
    }
    data.update(changes)
    return data


def optin_data(**changes: Any) -> dict[str, Any]:
    """Return a valid opt-in request with ``changes`` applied."""
    data: dict[str, Any] = {
        "band": "ib-1-7",
        "email": "guest@example.org",
        "consent": True,
        "consent_text": "Send me one follow-up offer.",
        "idempotency_key": f"storm-{uuid.uuid4()}",
    }
    data.update(changes)
    return data


def envelope_cases(data: dict[str, Any], **fields: Any) -> list[tuple[str, bytes, str]]:
    """Return envelope-level faults around an otherwise valid ``data``.

    ``fields``, such as a request's ``token``, go into every envelope.
    """
    padding = "x" * OVERSIZE_BYTES
    return [
        ("garbage bytes", b"\x00\x01garbage\xfe", "not UTF-8 JSON"),
        ("invalid UTF-8", b'{"v":1,"id":"\xff\xfe","ts":1}', "not UTF-8 JSON"),
        ("empty", b"", "not UTF-8 JSON"),
        ("JSON list", b"[1, 2, 3]", "must be a JSON object"),
        ("JSON string", b'"hello"', "must be a JSON object"),
        ("JSON null", b"null", "must be a JSON object"),
        ("schema v2", wrap(data, v=2, **fields), "schema version v=2"),
        ("schema v true", wrap(data, v=True, **fields), "schema version v=True"),
        ("id missing", wrap(data, id=None, **fields), "field 'id'"),
        ("id number", wrap(data, id=42, **fields), "field 'id'"),
        ("ts string", wrap(data, ts="yesterday", **fields), "field 'ts'"),
        # NaN and Infinity are not JSON (RFC 8259 section 6), so the whole
        # payload is rejected before any field is read.
        ("ts NaN", wrap(data, ts=math.nan, **fields), "not UTF-8 JSON"),
        ("ts Infinity", wrap(data, ts=math.inf, **fields), "not UTF-8 JSON"),
        ("data list", wrap([data], **fields), "field 'data'"),
        ("huge", wrap(data, pad=padding, **fields), "exceeds the limit"),
        (
            "deeply nested",
            wrap(data, **fields).replace(
                b'"data"', f'"x":{nested(100_000)},"data"'.encode(), 1
            ),
            "depth limit exceeded",
        ),
        (
            "5000-digit number",
            wrap(data, **fields).replace(
                b'"data"', b'"x":1' + b"0" * 5000 + b',"data"', 1
            ),
            "not UTF-8 JSON",
        ),
    ]


KIT_FIELD_CASES = [
    ("key missing", without(kit_data(), "idempotency_key"), "'idempotency_key'"),
    ("key short", kit_data(idempotency_key="abc"), "'idempotency_key'"),
    ("key number", kit_data(idempotency_key=12345678), "'idempotency_key'"),
    ("key NaN", kit_data(idempotency_key=math.nan), "not UTF-8 JSON"),
    ("band missing", without(kit_data(), "band"), "'band'"),
    ("band number", kit_data(band=7), "'band'"),
    ("band upper case", kit_data(band="IB-1-7"), "'band'"),
    ("band nested", kit_data(band=[[["ib-1-7"]]]), "'band'"),
    ("station missing", without(kit_data(), "station"), "'station'"),
    ("station exit reader", kit_data(station="exit-1"), "'station'"),
    ("station unknown", kit_data(station="kit-9"), "'station'"),
    ("station Infinity", kit_data(station=math.inf), "not UTF-8 JSON"),
    (
        "adv odd-length hex",
        without(kit_data(adv=ADVERT_HEX[:-1]), "band"),
        "'adv' is not hex",
    ),
    ("adv not hex", without(kit_data(adv="zz" * 10), "band"), "'adv' is not hex"),
    ("adv number", without(kit_data(adv=5), "band"), "'adv'"),
    ("adv too long", without(kit_data(adv="00" * 63), "band"), "'adv'"),
    ("band and adv", kit_data(adv=ADVERT_HEX), "exactly one of 'band' or 'adv'"),
    (
        "adv foreign band",
        without(kit_data(adv="0201060303aafe"), "band"),
        "not a band of this site",
    ),
]

OPTIN_FIELD_CASES = [
    ("key missing", without(optin_data(), "idempotency_key"), "'idempotency_key'"),
    ("band missing", without(optin_data(), "band"), "'band'"),
    ("band number", optin_data(band=-1), "'band'"),
    ("email and wallet", optin_data(wallet_id="wallet-1"), "'email' or 'wallet_id'"),
    ("no contact", without(optin_data(), "email"), "'email' or 'wallet_id'"),
    ("email invalid", optin_data(email="not-an-address"), "'email'"),
    ("email number", optin_data(email=42), "'email'"),
    ("wallet short", optin_data(email=None, wallet_id="ab"), "'wallet_id'"),
    ("consent false", optin_data(consent=False), "'consent'"),
    ("consent string", optin_data(consent="true"), "'consent'"),
    ("consent text missing", without(optin_data(), "consent_text"), "'consent_text'"),
    ("consent text long", optin_data(consent_text="x" * 501), "'consent_text'"),
]


def keyed(fields: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Return ``fields`` with a fresh idempotency key, then ``changes`` applied."""
    data = {**fields, "idempotency_key": f"storm-{uuid.uuid4()}"}
    data.update(changes)
    return data


def topup_data(**changes: Any) -> dict[str, Any]:
    """Return a valid wallet top-up of 5.00 EUR with ``changes`` applied."""
    fields = {"band": "ib-1-7", "currency": "EUR", "amount": 500, "method": "cash"}
    return keyed(fields, changes)


def charge_data(**changes: Any) -> dict[str, Any]:
    """Return a wallet charge with ``changes`` applied.

    The test site has an empty catalogue, so the box rejects the item.
    """
    fields = {"band": "ib-1-7", "currency": "EUR", "item": "water", "amount": 250}
    return keyed(fields, changes)


def transaction_data(**changes: Any) -> dict[str, Any]:
    """Return a refund or void of a transaction id with ``changes`` applied."""
    return keyed({"transaction_id": "tx-0001"}, changes)


def balance_data(**changes: Any) -> dict[str, Any]:
    """Return a valid balance query with ``changes`` applied."""
    return keyed({"band": "ib-1-7"}, changes)


def drop_data(**changes: Any) -> dict[str, Any]:
    """Return a drop claim, start, stop or status request with ``changes`` applied.

    The test site configures no drops, so the box rejects the drop.
    """
    return keyed({"drop": "tee-drop", "band": "ib-1-7"}, changes)


def claim_data(**changes: Any) -> dict[str, Any]:
    """Return a payment or cancellation of a drop claim with ``changes`` applied."""
    return keyed({"claim": "claim-0001"}, changes)


def code_data(**changes: Any) -> dict[str, Any]:
    """Return a drop pick-up or partner offer redemption with ``changes`` applied."""
    return keyed({"code": "AB12-CD3E"}, changes)


# Every request endpoint of the box with a builder of its request data.
ENDPOINTS: dict[str, Callable[..., dict[str, Any]]] = {
    "kits/issue": kit_data,
    "optin/register": optin_data,
    "wallet/topup": topup_data,
    "wallet/charge": charge_data,
    "wallet/refund": transaction_data,
    "wallet/void": transaction_data,
    "wallet/balance": balance_data,
    "drops/claim": drop_data,
    "drops/pay": claim_data,
    "drops/cancel": claim_data,
    "drops/pickup": code_data,
    "drops/start": drop_data,
    "drops/stop": drop_data,
    "drops/status": drop_data,
    "offers/redeem": code_data,
}
# The terminal console's endpoints, tested in tests/console (wellness notes
# and erasure in tests/analytics).
CONSOLE_ENDPOINTS = [
    f"console/{action}"
    for action in (
        "unlock",
        "overview",
        "nearby",
        "optins",
        "system",
        "jobs",
        "tokens",
        "promos",
        "logs",
        "token-issue",
        "token-revoke",
        "drop-create",
        "promo-create",
        "kit-restock",
        "reader-provision",
        "stream-start",
        "stream-stop",
        "stream-clip",
        "wellness-add",
        "wellness-list",
        "wellness-delete",
        "erase-contact",
    )
]
# Queries take no idempotency key, but every other endpoint requires one.
QUERIES = ("wallet/balance", "drops/status")

# Cases of the wallet, drop and offer endpoints: (endpoint, name, data,
# expected text of the error message).
ECONOMY_FIELD_CASES = [
    (endpoint, "key missing", without(data(), "idempotency_key"), "'idempotency_key'")
    for endpoint, data in ENDPOINTS.items()
    if endpoint not in QUERIES and endpoint not in ("kits/issue", "optin/register")
]
ECONOMY_FIELD_CASES += [
    ("wallet/topup", "band missing", without(topup_data(), "band"), "'band'"),
    (
        "wallet/topup",
        "currency missing",
        without(topup_data(), "currency"),
        "'currency'",
    ),
    ("wallet/topup", "currency other", topup_data(currency="USD"), "'currency'"),
    ("wallet/topup", "amount missing", without(topup_data(), "amount"), "'amount'"),
    ("wallet/topup", "amount fractional", topup_data(amount=4.5), "'amount'"),
    ("wallet/topup", "amount string", topup_data(amount="500"), "'amount'"),
    ("wallet/topup", "amount boolean", topup_data(amount=True), "'amount'"),
    ("wallet/topup", "amount zero", topup_data(amount=0), "'amount'"),
    ("wallet/topup", "amount negative", topup_data(amount=-500), "'amount'"),
    ("wallet/topup", "amount too large", topup_data(amount=MAX_AMOUNT + 1), "'amount'"),
    ("wallet/topup", "amount NaN", topup_data(amount=math.nan), "not UTF-8 JSON"),
    ("wallet/topup", "method missing", without(topup_data(), "method"), "'method'"),
    ("wallet/topup", "method unknown", topup_data(method="iou"), "'method'"),
    ("wallet/charge", "band upper case", charge_data(band="IB-1-7"), "'band'"),
    ("wallet/charge", "currency number", charge_data(currency=978), "'currency'"),
    ("wallet/charge", "item missing", without(charge_data(), "item"), "'item'"),
    ("wallet/charge", "item with slash", charge_data(item="a/b"), "'item'"),
    ("wallet/charge", "item not sold", charge_data(), "not in the catalogue"),
    (
        "wallet/refund",
        "id missing",
        without(transaction_data(), "transaction_id"),
        "'transaction_id'",
    ),
    (
        "wallet/refund",
        "id with space",
        transaction_data(transaction_id="tx 1"),
        "'transaction_id'",
    ),
    (
        "wallet/refund",
        "id too long",
        transaction_data(transaction_id="t" * 65),
        "'transaction_id'",
    ),
    (
        "wallet/void",
        "id missing",
        without(transaction_data(), "transaction_id"),
        "'transaction_id'",
    ),
    (
        "wallet/void",
        "id number",
        transaction_data(transaction_id=7),
        "'transaction_id'",
    ),
    ("wallet/balance", "band missing", without(balance_data(), "band"), "'band'"),
    ("wallet/balance", "band nested", balance_data(band=[["ib-1-7"]]), "'band'"),
    ("drops/claim", "drop missing", without(drop_data(), "drop"), "'drop'"),
    ("drops/claim", "drop unknown", drop_data(), "not a drop of this site"),
    ("drops/claim", "drop number", drop_data(drop=1), "'drop'"),
    ("drops/pay", "claim missing", without(claim_data(), "claim"), "'claim'"),
    ("drops/pay", "claim with slash", claim_data(claim="a/b"), "'claim'"),
    ("drops/cancel", "claim missing", without(claim_data(), "claim"), "'claim'"),
    ("drops/cancel", "claim empty", claim_data(claim=""), "'claim'"),
    ("drops/pickup", "code missing", without(code_data(), "code"), "'code'"),
    ("drops/pickup", "code number", code_data(code=1234), "'code'"),
    ("drops/pickup", "code too long", code_data(code="A" * 21), "'code'"),
    ("drops/start", "drop unknown", drop_data(), "not a drop of this site"),
    ("drops/stop", "drop missing", without(drop_data(), "drop"), "'drop'"),
    ("drops/status", "drop unknown", drop_data(), "not a drop of this site"),
    ("drops/status", "drop Infinity", drop_data(drop=math.inf), "not UTF-8 JSON"),
    ("offers/redeem", "code missing", without(code_data(), "code"), "'code'"),
    ("offers/redeem", "code too short", code_data(code="AB"), "'code'"),
    ("offers/redeem", "code too long", code_data(code="A" * 25), "'code'"),
    ("offers/redeem", "code list", code_data(code=["AB12-CD3E"]), "'code'"),
]


def api_topic(box: Box, endpoint: str) -> str:
    """Return the storm's request topic of ``endpoint``, written "service/action"."""
    service, action = endpoint.split("/")
    return box.bus.topics.device_api("box", "storm", service, action)


def assert_box_healthy(box: Box) -> None:
    """Assert that the bus task runs and no handler raised."""
    assert box.bus._task is not None
    assert not box.bus._task.done()
    assert box.bus.stats.handler_errors == 0
    assert box.bus.connected.is_set()


def assert_store_unchanged(box: Box, tokens_issued: int = 0) -> None:
    """Assert that no request or batch changed the store.

    ``tokens_issued`` is the number of tokens the test issued before its
    storm, each of which emitted one ``token_issued`` event.
    """
    for table in DOMAIN_TABLES:
        assert box.store.query(f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    # A reader that goes quiet raises a fault event, and nothing else may appear.
    events = box.store.query("SELECT type FROM outbox WHERE type NOT LIKE 'fault_%'")
    assert events == [("token_issued",)] * tokens_issued
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 5}}


async def assert_kit_request_succeeds(box: Box, make_client: Any) -> None:
    """Assert that a valid kit request from the kit reader still succeeds."""
    async with make_client("reader-kit-1", "reader", "kit-1") as kit_reader:
        reply = await kit_reader.request(
            box.bus.topics.api("kits", "issue"),
            kit_data(idempotency_key="after-the-storm"),
            timeout_s=TIMEOUT_S,
        )
    assert reply["remaining"] == 4
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 4}}


async def test_malformed_requests_get_invalid_request(
    box: Box, make_client: Any, storm_token: str
) -> None:
    kits_topic = api_topic(box, "kits/issue")
    optin_topic = api_topic(box, "optin/register")
    cases = [
        (api_topic(box, endpoint), f"{endpoint} {name}", payload, expected)
        for endpoint, data in ENDPOINTS.items()
        for name, payload, expected in envelope_cases(data(), token=storm_token)
    ]
    cases += [
        (kits_topic, f"kits {name}", wrap(data, token=storm_token), expected)
        for name, data, expected in KIT_FIELD_CASES
    ]
    cases += [
        (optin_topic, f"optin {name}", wrap(data, token=storm_token), expected)
        for name, data, expected in OPTIN_FIELD_CASES
    ]
    cases += [
        (
            api_topic(box, endpoint),
            f"{endpoint} {name}",
            wrap(data, token=storm_token),
            expected,
        )
        for endpoint, name, data, expected in ECONOMY_FIELD_CASES
    ]

    async with storm_client(make_client) as storm:
        for topic, name, payload, expected in cases:
            body = await storm.request(topic, payload)

            assert body["ok"] is False, name
            assert body["error"]["code"] == "invalid-request", name
            assert expected in body["error"]["message"], name

    assert_box_healthy(box)
    assert box.bus.stats.rejected == {"invalid-request": len(cases)}
    assert box.requests.counts["invalid-request"] == len(cases)
    assert_store_unchanged(box, tokens_issued=1)
    await assert_kit_request_succeeds(box, make_client)


def forged_token(token: str) -> str:
    """Return ``token``'s claims signed with a fresh key instead of the box's."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")


def unsigned_token(token: str) -> str:
    """Return ``token``'s claims as an unsigned JWT (``alg`` "none")."""
    claims = jwt.decode(token, options={"verify_signature": False})
    # PyJWT takes an empty key for the "none" algorithm.
    return jwt.encode(claims, "", algorithm="none")


async def test_token_faults_rejected(
    box: Box, make_client: Any, storm_token: str, issue_token: TokenFactory
) -> None:
    # (name, token or None for no token field, expected error code)
    faults: list[tuple[str, Any, str]] = [
        ("no token", None, "token-missing"),
        ("token number", 42, "token-malformed"),
        ("token too short", "abc", "token-malformed"),
        ("token not a JWT", "x" * 40, "token-malformed"),
        ("token forged", forged_token(storm_token), "token-forged"),
        ("token unsigned", unsigned_token(storm_token), "token-forged"),
        ("token of the desk", issue_token("desk", *SCOPES), "token-replayed"),
        (
            "token without scope",
            issue_token("storm", "stream:publish"),
            "token-wrong-scope",
        ),
    ]
    cases = []
    for endpoint, data in ENDPOINTS.items():
        for name, token, expected in faults:
            fields = {} if token is None else {"token": token}
            payload = wrap(data(), **fields)
            cases.append(
                (api_topic(box, endpoint), f"{endpoint} {name}", payload, expected)
            )

    async with storm_client(make_client) as storm:
        for topic, name, payload, expected in cases:
            body = await storm.request(topic, payload)

            assert body["ok"] is False, name
            assert body["error"]["code"] == expected, name
            assert body["error"]["reason"] == expected.removeprefix("token-"), name

    expected_counts = Counter(expected for _topic, _name, _payload, expected in cases)
    assert_box_healthy(box)
    assert box.bus.stats.rejected == expected_counts
    for code, count in expected_counts.items():
        assert box.requests.counts[code] == count, code
    # The storm's token and the two tokens issued for ``faults``.
    assert_store_unchanged(box, tokens_issued=3)
    await assert_kit_request_succeeds(box, make_client)


async def test_malformed_request_without_response_topic(
    box: Box, make_client: Any
) -> None:
    kits_topic = STORM_KITS_TOPIC
    cases = envelope_cases(kit_data())

    async with storm_client(make_client) as storm:
        for _name, payload, _expected in cases:
            await storm.send(kits_topic, payload)
        await storm.sync()

    # Without a response topic nothing is served. An envelope that cannot
    # be read is counted as invalid-request, not for its missing reply_to.
    assert_box_healthy(box)
    assert box.bus.stats.rejected == {"invalid-request": len(cases)}
    assert box.requests.counts["invalid-request"] == len(cases)
    assert_store_unchanged(box)


async def test_valid_request_without_response_topic(box: Box, make_client: Any) -> None:
    async with storm_client(make_client) as storm:
        await storm.send(STORM_KITS_TOPIC, wrap(kit_data()))
        await storm.sync()
        unanswered = storm.replies.empty()

    assert_box_healthy(box)
    assert unanswered
    assert box.bus.stats.rejected == {"invalid-response-topic": 1}
    assert_store_unchanged(box)


async def test_request_other_response_topics_rejected(
    box: Box, make_client: Any
) -> None:
    # The response topic must be the reply topic of the device that the
    # request topic names.
    pairs = [
        (STORM_KITS_TOPIC, "nightbox/test/events/checkout"),
        (STORM_KITS_TOPIC, "nightbox/test/reader/kit-1/reply"),
        (STORM_KITS_TOPIC, "nightbox/test/terminal/storm/reply"),
        (STORM_KITS_TOPIC, "nightbox/other-site/box/storm/reply"),
        (STORM_KITS_TOPIC, "nightbox/test/box/storm/status"),
        (STORM_KITS_TOPIC, "elsewhere/reply"),
        (STORM_KITS_TOPIC, "$SYS/reply"),
        ("nightbox/test/reader/kit-1/api/kits/issue", STORM_REPLY_TOPIC),
        ("nightbox/test/terminal/storm/api/kits/issue", STORM_REPLY_TOPIC),
    ]

    async with storm_client(make_client) as storm:
        for request_topic, response_topic in pairs:
            await asyncio.wait_for(
                storm.bus.publish(
                    request_topic,
                    wrap(kit_data()),
                    response_topic=response_topic,
                    correlation=b"c",
                ),
                TIMEOUT_S,
            )
        await storm.sync()
        unanswered = storm.replies.empty()

    assert_box_healthy(box)
    assert unanswered
    assert box.bus.stats.rejected == {"invalid-response-topic": len(pairs)}
    assert box.requests.counts["invalid-response-topic"] == len(pairs)
    assert_store_unchanged(box)


async def test_request_wildcard_response_topic_rejected(
    box: Box, make_client: Any
) -> None:
    async with storm_client(make_client) as storm:
        for response_topic in ("nightbox/test/box/storm/+", "nightbox/test/#"):
            await asyncio.wait_for(
                storm.bus.publish(
                    STORM_KITS_TOPIC,
                    wrap(without(kit_data(), "idempotency_key")),
                    response_topic=response_topic,
                    correlation=b"wildcard",
                ),
                TIMEOUT_S,
            )
        await storm.sync()
        unanswered = storm.replies.empty()

    assert_box_healthy(box)
    assert unanswered
    assert box.bus.stats.rejected["invalid-response-topic"] == 2
    assert_store_unchanged(box)


async def test_request_from_unknown_device_kind_rejected(
    box: Box, make_client: Any
) -> None:
    # Only boxes, readers and terminals send requests. The response topic of
    # each request is the reply topic of the device that its topic names.
    devices = ["observer/dash", "creators/maya", "events/kit_issued"]

    async with storm_client(make_client) as storm:
        for device in devices:
            await asyncio.wait_for(
                storm.bus.publish(
                    f"nightbox/test/{device}/api/kits/issue",
                    wrap(kit_data()),
                    response_topic=f"nightbox/test/{device}/reply",
                    correlation=b"kind",
                ),
                TIMEOUT_S,
            )
        await storm.sync()
        unanswered = storm.replies.empty()

    assert_box_healthy(box)
    assert unanswered
    assert box.bus.stats.rejected == {"invalid-request-topic": len(devices)}
    assert box.requests.counts["invalid-request-topic"] == len(devices)
    assert_store_unchanged(box)


def batch_cases() -> list[tuple[str, bytes]]:
    """Return payloads of reader exit-1 that the box must reject whole."""
    too_many = [TINY_SIGHTING] * (MAX_SIGHTINGS_PER_BATCH + 1)
    cases = [(name, payload) for name, payload, _ in envelope_cases(batch())]
    cases += [
        ("no data", wrap(None)),
        ("data empty", wrap({})),
        ("boot missing", wrap(without(batch(), "boot"))),
        ("boot number", wrap(batch(boot=7))),
        ("boot too long", wrap(batch(boot="b" * 33))),
        ("boot with slash", wrap(batch(boot="a/b"))),
        ("seq missing", wrap(without(batch(), "seq"))),
        ("seq negative", wrap(batch(seq=-1))),
        ("seq string", wrap(batch(seq="1"))),
        ("seq boolean", wrap(batch(seq=True))),
        ("seq float", wrap(batch(seq=1.5))),
        ("t missing", wrap(without(batch(), "t"))),
        ("t string", wrap(batch(t="now"))),
        ("t NaN", wrap(batch(t=math.nan))),
        ("t Infinity", wrap(batch(t=math.inf))),
        ("t -Infinity", wrap(batch(t=-math.inf))),
        ("t overflows a float", wrap(batch(t=10**400))),
        ("sightings missing", wrap(without(batch(), "sightings"))),
        ("sightings object", wrap(batch(sightings={"0": sighting()}))),
        ("2001 sightings", wrap(batch(sightings=too_many))),
        ("heard negative", wrap(batch(heard=-1))),
        ("heard string", wrap(batch(heard="3"))),
        ("reader mismatch", wrap(batch(reader="exit-2"))),
        ("reader nested", wrap(batch(reader=[[["exit-1"]]]))),
    ]
    return cases


def sighting_cases() -> list[tuple[str, Any]]:
    """Return bad sightings; the box drops each and keeps the rest of its batch."""
    return [
        ("not an object", 5),
        ("adv missing", without(sighting(), "adv")),
        ("adv odd-length hex", sighting(adv=ADVERT_HEX[:-1])),
        ("adv not hex", sighting(adv="zz" * 10)),
        ("adv empty", sighting(adv="")),
        ("adv too long", sighting(adv="00" * 63)),
        ("adv number", sighting(adv=1234)),
        ("addr invalid", sighting(addr="not-an-address")),
        ("rssi above range", sighting(rssi=21)),
        ("rssi below range", sighting(rssi=-128)),
        ("rssi string", sighting(rssi="strong")),
        ("n zero", sighting(n=0)),
        ("n negative", sighting(n=-3)),
        ("n string", sighting(n="3")),
        ("n above limit", sighting(rssi=-50, n=1_000_001)),
        ("t missing", without(sighting(), "t")),
        ("t far in the past", sighting(t=1.0)),
    ]


def non_json_number_cases() -> list[tuple[str, Any]]:
    """Return sightings whose numbers JSON cannot express (RFC 8259 section 6).

    Such a number makes the whole payload invalid JSON, so the box rejects
    the batch instead of one sighting.
    """
    return [
        ("rssi NaN", sighting(rssi=math.nan)),
        ("rssi Infinity", sighting(rssi=math.inf)),
        ("rssi overflows a float", sighting(rssi=-(10**400))),
        ("n huge", sighting(rssi=-50, n=10**400)),
        ("t Infinity", sighting(t=math.inf)),
        ("t overflows a float", sighting(t=10**400)),
    ]


async def test_malformed_batches_rejected(box: Box, make_client: Any) -> None:
    known = box.bus.topics.sightings("exit-1")
    cases = batch_cases()

    async with storm_client(make_client) as storm:
        for _name, payload in cases:
            await storm.send(known, payload)
        await storm.sync()

    assert_box_healthy(box)
    assert box.bus.stats.rejected == {"malformed-batch": len(cases)}
    assert box.checkouts.stats.rejected == {"malformed-batch": len(cases)}
    assert box.checkouts.stats.batches == 0
    assert box.checkouts.last_batch("exit-1") is None
    assert_store_unchanged(box)
    await assert_kit_request_succeeds(box, make_client)


async def test_non_json_numbers_reject_batch(box: Box, make_client: Any) -> None:
    known = box.bus.topics.sightings("exit-1")
    cases = non_json_number_cases()

    async with storm_client(make_client) as storm:
        for seq, (_name, bad) in enumerate(cases, start=1):
            await storm.send(known, wrap(batch(seq=seq, sightings=[bad, sighting()])))
        await storm.sync()

    assert_box_healthy(box)
    assert box.checkouts.stats.batches == 0
    assert box.checkouts.stats.rejected == {"malformed-batch": len(cases)}
    assert box.bus.stats.rejected == {"malformed-batch": len(cases)}
    assert_store_unchanged(box)


async def test_malformed_sightings_dropped(box: Box, make_client: Any) -> None:
    known = box.bus.topics.sightings("exit-1")
    cases = sighting_cases()

    async with storm_client(make_client) as storm:
        for seq, (_name, bad) in enumerate(cases, start=1):
            # Each batch also carries one valid weak sighting, which is used.
            data = batch(seq=seq, sightings=[bad, sighting()])
            await storm.send(known, wrap(data))
        await storm.sync()

    stats = box.checkouts.stats
    assert_box_healthy(box)
    assert stats.batches == len(cases)
    assert stats.rejected == {"malformed-sighting": len(cases)}
    assert stats.sightings == len(cases)
    assert stats.band_sightings == len(cases)
    assert stats.checkouts == 0
    assert box.bus.stats.rejected == {}
    assert_store_unchanged(box)
    await assert_kit_request_succeeds(box, make_client)


async def test_batch_at_sighting_limit_accepted(box: Box, make_client: Any) -> None:
    # Sightings must lie inside their batch's interval, which ends now.
    sightings = [dict(TINY_SIGHTING, t=time.time())] * MAX_SIGHTINGS_PER_BATCH
    payload = wrap(batch(sightings=sightings))

    async with storm_client(make_client) as storm:
        await storm.send(box.bus.topics.sightings("exit-1"), payload)
        await storm.sync()

    assert_box_healthy(box)
    assert box.checkouts.stats.batches == 1
    assert box.checkouts.stats.sightings == MAX_SIGHTINGS_PER_BATCH
    assert box.checkouts.stats.rejected == {"not-a-site-band": MAX_SIGHTINGS_PER_BATCH}


async def test_unknown_reader_batches_rejected(box: Box, make_client: Any) -> None:
    unknown = box.bus.topics.sightings("ghost")
    payloads = [wrap(batch(reader="ghost")), b"\xffgarbage", wrap(batch(seq=-1))]

    async with storm_client(make_client) as storm:
        for payload in payloads:
            await storm.send(unknown, payload)
        await storm.sync()

    assert_box_healthy(box)
    assert box.bus.stats.rejected == {"unknown-reader": len(payloads)}
    assert box.checkouts.stats.rejected == {"unknown-reader": len(payloads)}
    assert box.checkouts.stats.batches == 0
    assert_store_unchanged(box)


async def test_garbage_on_reply_and_status_topics(box: Box, make_client: Any) -> None:
    # The box subscribes to its own reply topic but not to reader status, and
    # both must shrug off anything published there.
    targets = [
        box.bus.topics.reply("box", "box-1"),
        box.bus.topics.status("reader", "exit-1"),
    ]
    payloads = [b"\xff\xfe", b"[]", wrap({"ok": True}), wrap(None, ok=True)]

    async with storm_client(make_client) as storm:
        for topic in targets:
            for payload in payloads:
                await storm.send(topic, payload)
        await storm.sync()

    assert_box_healthy(box)
    assert box.bus.stats.rejected == {}
    assert_store_unchanged(box)


async def test_box_subscriptions_all_covered(box: Box) -> None:
    # The tests above cover exactly these filters; a new subscription of the
    # box needs its own malformed cases here.
    # Remote management's own subscriptions have their malformed cases in
    # tests/remote (test_commands.py, test_telemetry.py, test_homeassistant.py),
    # and the reader firmware offer's in tests/readers/test_firmware_update_offer.py.
    assert sorted(box.bus._subscriptions) == [
        "homeassistant/status",
        "nightbox/test/+/+/api/+/+",
        "nightbox/test/box/box-1/cmnd/+",
        "nightbox/test/box/box-1/reply",
        "nightbox/test/reader/+/availability",
        "nightbox/test/reader/+/firmware/get",
        "nightbox/test/reader/+/sightings",
    ]
    # Every endpoint served on the request filter has envelope, field and
    # token cases above, except the terminal console's, whose field, token
    # and requester cases are in tests/console.
    served = sorted(box.requests._endpoints)
    assert [name for name in served if not name.startswith("console/")] == sorted(
        ENDPOINTS
    )
    assert [name for name in served if name.startswith("console/")] == sorted(
        CONSOLE_ENDPOINTS
    )


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_BATCH_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "reader": _JSON | st.just("exit-1"),
        "boot": _JSON | st.just("storm"),
        "seq": _JSON | st.integers(min_value=-5, max_value=5),
        "t": _JSON,
        "heard": _JSON,
        "sightings": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "t": _JSON,
                    "addr": _JSON,
                    "rssi": _JSON,
                    "n": _JSON,
                    "adv": _JSON | st.just(ADVERT_HEX),
                },
            )
            | _JSON,
            max_size=4,
        )
        | _JSON,
    },
)
_REQUEST_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "station": _JSON,
        "band": _JSON,
        "adv": _JSON,
        "email": _JSON,
        "wallet_id": _JSON,
        "consent": _JSON,
        "consent_text": _JSON,
        "idempotency_key": _JSON,
    },
)
_TOPIC_KIND = st.sampled_from(["sightings", "ghost", "kits", "optin", "reply"])
_PAYLOAD = st.one_of(
    st.binary(max_size=64),
    _JSON.map(lambda value: json.dumps(value).encode()),
    _BATCH_FIELDS.map(wrap),
    _REQUEST_FIELDS.map(wrap),
    st.dictionaries(st.sampled_from(["v", "id", "ts", "src", "data"]), _JSON).map(
        lambda body: json.dumps(body).encode()
    ),
)


def generated_storm() -> list[tuple[str, bytes]]:
    """Draw 150 random (topic kind, payload) pairs, the same ones every run."""
    drawn: list[tuple[str, bytes]] = []

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(_TOPIC_KIND, _PAYLOAD)
    def collect(kind: str, payload: bytes) -> None:
        drawn.append((kind, payload))

    collect()
    return drawn


async def test_generated_payloads_leave_box_running(box: Box, make_client: Any) -> None:
    topics = {
        "sightings": box.bus.topics.sightings("exit-1"),
        "ghost": box.bus.topics.sightings("ghost"),
        "kits": api_topic(box, "kits/issue"),
        "optin": api_topic(box, "optin/register"),
        "reply": box.bus.topics.reply("box", "box-1"),
    }
    storm_payloads = generated_storm()
    requests = 0

    async with storm_client(make_client) as storm:
        for kind, payload in storm_payloads:
            if kind in ("kits", "optin"):
                body = await storm.request(topics[kind], payload)
                requests += 1
                assert body["ok"] is False, payload[:200]
                assert body["error"]["code"] == "invalid-request", payload[:200]
            else:
                await storm.send(topics[kind], payload)
        await storm.sync()

    batches_rejected = box.checkouts.stats.rejected["malformed-batch"]
    assert len(storm_payloads) == 150
    assert_box_healthy(box)
    assert box.bus.stats.rejected["invalid-request"] == requests
    assert box.bus.stats.rejected["malformed-batch"] == batches_rejected
    assert batches_rejected > 0
    assert box.checkouts.stats.checkouts == 0
    assert_store_unchanged(box)
    await assert_kit_request_succeeds(box, make_client)
