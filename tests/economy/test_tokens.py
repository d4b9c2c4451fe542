"""Edge tokens: every rejection reason, the signing key, and the same checks
over the bus on ``api/wallet/charge``.

The unit tests run EdgeTokens against a real SQLite store in a temporary
folder. The bus tests send real requests through mosquitto to a running box
and check that a rejected token changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from economy_site import economy_site_config, terminal_fixture, top_up  # noqa: F401
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho_publish import publish_with_paho

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.clock import Clock, ManualClock, TimeSource
from appliance.config import SiteConfig
from appliance.errors import NightboxError, RequestError
from appliance.runtime import Box
from appliance.store import Store
from appliance.tokens import (
    CLOCK_SKEW_S,
    MAX_TTL_S,
    SCOPES,
    EdgeTokens,
    TokenError,
    load_or_create_key,
)
from provisioning import SiteCredentials

ISSUER = "nightbox:club:box-1"
AUDIENCE = "club"
# 2027-01-15 08:00:00 UTC, a fixed wall time for the unit tests.
START = 1_800_000_000.0


class FrozenUntrustedClock:
    """A wall clock nothing vouches for and that never moves, as after a power cut."""

    def __init__(self, now_s: float) -> None:
        self._now = now_s

    def now(self) -> float:
        return self._now

    @property
    def source(self) -> TimeSource:
        return TimeSource.UNTRUSTED

    @property
    def trusted(self) -> bool:
        return False


class FakeMonotonic:
    """A monotonic clock in seconds that moves only when the test sets it."""

    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


@dataclass
class Authority:
    """An EdgeTokens with the store, key and clocks behind it."""

    tokens: EdgeTokens
    key: Ed25519PrivateKey
    store: Store
    monotonic: FakeMonotonic


def make_authority(folder: Path, clock: Clock) -> Iterator[Authority]:
    store = Store(folder / "nightbox.sqlite3", clock)
    key = load_or_create_key(folder / "secrets" / "edge-token-key.pem")
    monotonic = FakeMonotonic()
    tokens = EdgeTokens(
        key, store, clock, issuer=ISSUER, audience=AUDIENCE, monotonic=monotonic
    )
    try:
        yield Authority(tokens, key, store, monotonic)
    finally:
        store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def authority(tmp_path: Path, clock: ManualClock) -> Iterator[Authority]:
    """A token authority on a trusted clock that the test advances."""
    yield from make_authority(tmp_path / "trusted", clock)


@pytest.fixture
def untrusted(tmp_path: Path) -> Iterator[Authority]:
    """A token authority whose wall clock is untrusted and stuck at START."""
    yield from make_authority(tmp_path / "untrusted", FrozenUntrustedClock(START))


def claims(**changes: Any) -> dict[str, Any]:
    """Return valid claims for bar-1 around START; a None value drops a claim."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bar-1",
        "scope": "pos:charge",
        "iat": int(START),
        "nbf": int(START),
        "exp": int(START) + 3600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not None}


def sign(key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    return jwt.encode(payload, key, algorithm="EdDSA")


def segment(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def hs256_token(payload: dict[str, Any], secret: bytes) -> str:
    """Return an HS256 JWT built by hand, as an attacker would build it."""
    header = segment(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = segment(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256)
    return f"{header}.{body}.{segment(signature.digest())}"


def rejection(authority: Authority, token: Any, scope: str, holder: str) -> TokenError:
    with pytest.raises(TokenError) as caught:
        authority.tokens.verify(token, scope, holder)
    return caught.value


def outbox(store: Store) -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in store.query("SELECT type, body FROM outbox")]


# Rejection reasons, one by one.


def test_verify_missing_token(authority: Authority) -> None:
    error = rejection(authority, None, "pos:charge", "bar-1")

    assert error.reason == "missing"


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt-at-all-garbage", "short", "a.b.c" * 500, 12345, b"eyJ.bytes.token!"],
    ids=["garbage", "too-short", "too-long", "number", "bytes"],
)
def test_verify_malformed_token(authority: Authority, token: Any) -> None:
    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "malformed"


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "scope", "iat", "exp", "jti"])
def test_verify_missing_claim(authority: Authority, claim: str) -> None:
    token = sign(authority.key, claims(**{claim: None}))

    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": 7},
        {"sub": ["bar-1"]},
        {"jti": 42},
        {"exp": int(START)},
        {"exp": int(START + MAX_TTL_S) + 1},
    ],
    ids=["scope-number", "subject-list", "id-number", "no-lifetime", "too-long"],
)
def test_verify_invalid_claim(authority: Authority, changes: dict[str, Any]) -> None:
    token = sign(authority.key, claims(**changes))

    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "malformed"


def other_key_token(authority: Authority) -> str:
    return sign(Ed25519PrivateKey.generate(), claims())


def none_algorithm_token(authority: Authority) -> str:
    return jwt.encode(claims(), None, algorithm="none")


def hs256_public_key_token(authority: Authority) -> str:
    public_pem = authority.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hs256_token(claims(), public_pem)


def hs256_raw_public_key_token(authority: Authority) -> str:
    public_raw = authority.key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hs256_token(claims(), public_raw)


def altered_payload_token(authority: Authority) -> str:
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 3600).token
    header, body, signature = issued.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["scope"] = "pos:charge pos:refund"
    return f"{header}.{segment(json.dumps(payload).encode())}.{signature}"


def wrong_issuer_token(authority: Authority) -> str:
    return sign(authority.key, claims(iss="nightbox:club:box-2"))


def wrong_audience_token(authority: Authority) -> str:
    return sign(authority.key, claims(aud="other-club"))


@pytest.mark.parametrize(
    "make_token",
    [
        other_key_token,
        none_algorithm_token,
        hs256_public_key_token,
        hs256_raw_public_key_token,
        altered_payload_token,
        wrong_issuer_token,
        wrong_audience_token,
    ],
    ids=lambda make_token: make_token.__name__.removesuffix("_token"),
)
def test_verify_forged_token(
    authority: Authority, make_token: Callable[[Authority], str]
) -> None:
    token = make_token(authority)

    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "forged"


def test_verify_expired_past_skew(authority: Authority, clock: ManualClock) -> None:
    token = authority.tokens.issue("bar-1", ["pos:charge"], 600).token

    clock.advance_to(START + 600 + CLOCK_SKEW_S + 1)
    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "expired"


def test_verify_expired_inside_skew(authority: Authority, clock: ManualClock) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 600)

    clock.advance_to(START + 600 + CLOCK_SKEW_S - 1)
    verified = authority.tokens.verify(issued.token, "pos:charge", "bar-1")

    assert verified.token_id == issued.claims.token_id


def test_verify_not_yet_valid(authority: Authority) -> None:
    token = sign(authority.key, claims(nbf=int(START + CLOCK_SKEW_S) + 60))

    error = rejection(authority, token, "pos:charge", "bar-1")

    assert error.reason == "not-yet-valid"


def test_verify_nbf_inside_skew(authority: Authority) -> None:
    payload = claims(nbf=int(START + CLOCK_SKEW_S) - 1)
    token = sign(authority.key, payload)

    verified = authority.tokens.verify(token, "pos:charge", "bar-1")

    assert verified.token_id == payload["jti"]


def test_verify_wrong_scope(authority: Authority) -> None:
    token = authority.tokens.issue("bar-1", ["pos:charge", "pos:void"], 600).token

    error = rejection(authority, token, "pos:refund", "bar-1")

    assert error.reason == "wrong-scope"


def test_verify_replayed_other_holder(authority: Authority) -> None:
    token = authority.tokens.issue("bar-1", ["pos:charge"], 600).token

    error = rejection(authority, token, "pos:charge", "bar-2")

    assert error.reason == "replayed"


def test_verify_revoked_token(authority: Authority) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 600)
    authority.tokens.verify(issued.token, "pos:charge", "bar-1")

    revoked = authority.tokens.revoke(issued.claims.token_id)
    error = rejection(authority, issued.token, "pos:charge", "bar-1")

    assert revoked is True
    assert error.reason == "revoked"


def test_revoke_twice_returns_false(authority: Authority) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 600)

    first = authority.tokens.revoke(issued.claims.token_id)
    second = authority.tokens.revoke(issued.claims.token_id, "again")

    assert first is True
    assert second is False
    revoked_events = [kind for kind, _ in outbox(authority.store)]
    assert revoked_events.count("token_revoked") == 1


def test_verify_valid_token(authority: Authority) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:charge", "pos:refund"], 600)

    verified = authority.tokens.verify(issued.token, "pos:refund", "bar-1")

    assert verified == issued.claims
    assert verified.scopes == frozenset({"pos:charge", "pos:refund"})
    assert verified.expires_at == START + 600


# An untrusted wall clock judges expiry while it is at or past a token's
# issue time. A clock set back behind it (a power cut) makes the lifetime
# count on the monotonic clock from first use.


def set_back_token(authority: Authority, lifetime_s: int = 600) -> str:
    """Return a token issued an hour after the box's clock reads now."""
    issued = int(START) + 3600
    return sign(
        authority.key,
        claims(iat=issued, nbf=issued, exp=issued + lifetime_s),
    )


def test_untrusted_set_back_counts_from_first_use(untrusted: Authority) -> None:
    token = set_back_token(untrusted)

    # Far more than the lifetime passes before the terminal first uses it.
    untrusted.monotonic.value += 600 * 10
    verified = untrusted.tokens.verify(token, "pos:charge", "bar-1")

    assert verified.subject == "bar-1"


def test_untrusted_set_back_expires_after_lifetime(untrusted: Authority) -> None:
    token = set_back_token(untrusted)
    untrusted.tokens.verify(token, "pos:charge", "bar-1")

    untrusted.monotonic.value += 600 + CLOCK_SKEW_S
    untrusted.tokens.verify(token, "pos:charge", "bar-1")
    untrusted.monotonic.value += 1
    error = rejection(untrusted, token, "pos:charge", "bar-1")

    assert error.reason == "expired"


def test_untrusted_judges_wall_expiry(untrusted: Authority) -> None:
    # Issued and expired before the box's wall time, which has not gone back.
    token = sign(
        untrusted.key,
        claims(
            iat=int(START) - 90_000, nbf=int(START) - 90_000, exp=int(START) - 86_400
        ),
    )

    error = rejection(untrusted, token, "pos:charge", "bar-1")

    assert error.reason == "expired"


def test_untrusted_accepts_within_lifetime(untrusted: Authority) -> None:
    token = untrusted.tokens.issue("bar-1", ["pos:charge"], 600).token

    # The monotonic clock plays no part while the wall clock is usable.
    untrusted.monotonic.value += 600 * 10
    verified = untrusted.tokens.verify(token, "pos:charge", "bar-1")

    assert verified.expires_at == START + 600


def test_untrusted_expiry_survives_restart(tmp_path: Path) -> None:
    # The box restarts after the token expired: a fresh authority with no
    # memory of first uses, on a wall clock that kept running.
    first = make_authority(tmp_path / "box", FrozenUntrustedClock(START))
    token = next(first).tokens.issue("bar-1", ["pos:charge"], 600).token
    first.close()
    later = make_authority(
        tmp_path / "box", FrozenUntrustedClock(START + 600 + CLOCK_SKEW_S + 1)
    )
    try:
        error = rejection(next(later), token, "pos:charge", "bar-1")
    finally:
        later.close()

    assert error.reason == "expired"


# The signing key file.


def test_key_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "edge-token-key.pem"

    load_or_create_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_key_reused_on_next_load(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "secrets" / "edge-token-key.pem"
    first = load_or_create_key(path)
    pem = path.read_bytes()

    second = load_or_create_key(path)

    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert second.public_key().public_bytes(*raw) == first.public_key().public_bytes(
        *raw
    )
    assert path.read_bytes() == pem
    token = sign(first, claims())
    store = Store(tmp_path / "nightbox.sqlite3", clock)
    try:
        tokens = EdgeTokens(second, store, clock, issuer=ISSUER, audience=AUDIENCE)
        assert tokens.verify(token, "pos:charge", "bar-1").subject == "bar-1"
    finally:
        store.close()


def write_garbage(path: Path) -> None:
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")


def write_folder(path: Path) -> None:
    path.mkdir()


def write_ec_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(
    "write",
    [write_garbage, write_folder, write_ec_key],
    ids=["garbage", "folder", "ec-key"],
)
def test_key_unusable_file(tmp_path: Path, write: Callable[[Path], None]) -> None:
    path = tmp_path / "edge-token-key.pem"
    write(path)

    with pytest.raises(NightboxError) as caught:
        load_or_create_key(path)

    assert str(path) in str(caught.value)


# Issuing.


@pytest.mark.parametrize(
    ("subject", "scopes", "ttl_s", "reason"),
    [
        ("bar-1", ["pos:teleport"], 600, "wrong-scope"),
        ("bar-1", ["pos:charge", "kits:steal"], 600, "wrong-scope"),
        ("bar-1", [], 600, "wrong-scope"),
        ("Bar-1", ["pos:charge"], 600, "malformed"),
        ("", ["pos:charge"], 600, "malformed"),
        ("bar 1", ["pos:charge"], 600, "malformed"),
        ("-bar", ["pos:charge"], 600, "malformed"),
        ("b" * 33, ["pos:charge"], 600, "malformed"),
        ("bar-1", ["pos:charge"], MAX_TTL_S + 1, "malformed"),
        ("bar-1", ["pos:charge"], 0, "malformed"),
        ("bar-1", ["pos:charge"], -60, "malformed"),
    ],
    ids=[
        "unknown-scope",
        "one-unknown-scope",
        "no-scope",
        "uppercase-subject",
        "empty-subject",
        "space-in-subject",
        "leading-dash",
        "long-subject",
        "ttl-above-max",
        "zero-ttl",
        "negative-ttl",
    ],
)
def test_issue_rejects_request(
    authority: Authority,
    subject: str,
    scopes: list[str],
    ttl_s: float,
    reason: str,
) -> None:
    with pytest.raises(TokenError) as caught:
        authority.tokens.issue(subject, scopes, ttl_s)

    assert caught.value.reason == reason
    assert authority.store.query("SELECT id FROM edge_tokens") == []
    assert outbox(authority.store) == []


def test_issue_unknown_scope_message(authority: Authority) -> None:
    with pytest.raises(TokenError) as caught:
        authority.tokens.issue("bar-1", ["pos:teleport"], 600)

    assert "'pos:teleport'" in caught.value.message
    for scope in SCOPES:
        assert scope in caught.value.message


def test_issue_respects_max_ttl(tmp_path: Path, clock: ManualClock) -> None:
    store = Store(tmp_path / "nightbox.sqlite3", clock)
    key = load_or_create_key(tmp_path / "key.pem")
    tokens = EdgeTokens(
        key, store, clock, issuer=ISSUER, audience=AUDIENCE, max_ttl_s=3600
    )
    try:
        issued = tokens.issue("bar-1", ["pos:charge"], 3600)
        with pytest.raises(TokenError) as caught:
            tokens.issue("bar-1", ["pos:charge"], 3601)
    finally:
        store.close()

    assert issued.claims.expires_at == START + 3600
    assert caught.value.reason == "malformed"


def test_issue_writes_outbox_event(authority: Authority) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:refund", "pos:charge"], 600)

    events = outbox(authority.store)

    assert [kind for kind, _ in events] == ["token_issued"]
    assert json.loads(events[0][1]) == {
        "token_id": issued.claims.token_id,
        "subject": "bar-1",
        "scopes": ["pos:charge", "pos:refund"],
        "expires_at": START + 600,
    }
    assert issued.token not in events[0][1]
    assert issued.token.split(".")[2] not in events[0][1]


def test_revoke_writes_outbox_event(authority: Authority) -> None:
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 600)

    authority.tokens.revoke(issued.claims.token_id, "terminal stolen")

    events = outbox(authority.store)
    assert [kind for kind, _ in events] == ["token_issued", "token_revoked"]
    assert json.loads(events[1][1]) == {
        "token_id": issued.claims.token_id,
        "reason": "terminal stolen",
    }
    for _, body in events:
        assert issued.token not in body
        assert issued.token.split(".")[2] not in body


def test_token_never_logged(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = authority.tokens.issue("bar-1", ["pos:charge"], 600)
    token = issued.token
    signature = token.split(".")[2]

    authority.tokens.verify(token, "pos:charge", "bar-1")
    errors = [
        rejection(authority, token, "pos:void", "bar-1"),
        rejection(authority, token, "pos:charge", "bar-2"),
        rejection(authority, token[:-4] + "AAAA", "pos:charge", "bar-1"),
    ]
    authority.tokens.revoke(issued.claims.token_id)
    errors.append(rejection(authority, token, "pos:charge", "bar-1"))

    assert issued.claims.token_id in caplog.text
    assert token not in caplog.text
    assert signature not in caplog.text
    assert token not in repr(issued)
    for error in errors:
        assert signature not in str(error)


# Over the bus: api/wallet/charge with each failing token.

BAND = "ib-1-77"
CHARGE = {"band": BAND, "item": "beer", "quantity": 1, "amount": 450, "currency": "EUR"}


def box_claims(site_config: SiteConfig, **changes: Any) -> dict[str, Any]:
    """Return claims that the test box issues to bar-1, around the current time."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": f"nightbox:{site_config.site_id}:{site_config.box_id}",
        "aud": site_config.site_id,
        "sub": "bar-1",
        "scope": "pos:charge",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(changes)
    return payload


def box_key(site_config: SiteConfig) -> Ed25519PrivateKey:
    """Return the running box's own signing key, read from its data folder."""
    pem = (site_config.data_dir / "secrets" / "edge-token-key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def no_token(box: Box, site_config: SiteConfig) -> str | None:
    return None


def garbage_token(box: Box, site_config: SiteConfig) -> str | None:
    return "this-is-not-a-json-web-token"


def forged_token(box: Box, site_config: SiteConfig) -> str | None:
    return sign(Ed25519PrivateKey.generate(), box_claims(site_config))


def expired_token(box: Box, site_config: SiteConfig) -> str | None:
    now = int(time.time())
    payload = box_claims(site_config, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    return sign(box_key(site_config), payload)


def not_yet_valid_token(box: Box, site_config: SiteConfig) -> str | None:
    now = int(time.time())
    payload = box_claims(site_config, nbf=now + 1800, exp=now + 3600)
    return sign(box_key(site_config), payload)


def topup_only_token(box: Box, site_config: SiteConfig) -> str | None:
    return box.tokens.issue("bar-1", ["wallet:topup"], 3600).token


def bar_1_token(box: Box, site_config: SiteConfig) -> str | None:
    return box.tokens.issue("bar-1", ["pos:charge"], 3600).token


def revoked_token(box: Box, site_config: SiteConfig) -> str | None:
    issued = box.tokens.issue("bar-1", ["pos:charge"], 3600)
    assert box.tokens.revoke(issued.claims.token_id)
    return issued.token


def ledger_counts(store: Store) -> tuple[Any, ...] | None:
    return store.query_one(
        "SELECT (SELECT COUNT(*) FROM ledger_transactions),"
        " (SELECT COUNT(*) FROM ledger_entries),"
        " (SELECT COUNT(*) FROM requests),"
        " (SELECT balance FROM wallets WHERE band = ?)",
        (BAND,),
    )


@pytest.mark.parametrize(
    ("reason", "make_token", "client_id"),
    [
        ("missing", no_token, "bar-1"),
        ("malformed", garbage_token, "bar-1"),
        ("forged", forged_token, "bar-1"),
        ("expired", expired_token, "bar-1"),
        ("not-yet-valid", not_yet_valid_token, "bar-1"),
        ("wrong-scope", topup_only_token, "bar-1"),
        ("replayed", bar_1_token, "bar-2"),
        ("revoked", revoked_token, "bar-1"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_charge_rejects_token(
    box: Box,
    site_config: SiteConfig,
    terminal,
    make_client,
    reason: str,
    make_token: Callable[[Box, SiteConfig], str | None],
    client_id: str,
) -> None:
    async with terminal("desk-2", "wallet:topup") as desk:
        await top_up(desk, BAND, 2000)
    before = ledger_counts(box.store)
    token = make_token(box, site_config)
    key = uuid.uuid4().hex

    async with make_client(f"terminal-{client_id}", "terminal", client_id) as bus:
        with pytest.raises(RequestError) as caught:
            await bus.request(
                bus.topics.api("wallet", "charge"),
                {**CHARGE, "idempotency_key": key},
                timeout_s=5.0,
                token=token,
            )

    assert caught.value.code == f"token-{reason}"
    assert caught.value.details.get("reason") == reason
    assert ledger_counts(box.store) == before
    assert box.store.query("SELECT 1 FROM requests WHERE key = ?", (key,)) == []
    assert box.requests.counts[f"token-{reason}"] == 1


async def test_charge_retry_after_revocation(box: Box, terminal) -> None:
    async with terminal("bar-1", "pos:charge", "wallet:topup") as bar:
        await top_up(bar, BAND, 2000)
        key = uuid.uuid4().hex
        charged = await bar.call("wallet", "charge", idempotency_key=key, **CHARGE)
        token_id = jwt.decode(bar.token, options={"verify_signature": False})["jti"]
        assert box.tokens.revoke(token_id)

        with pytest.raises(RequestError) as caught:
            await bar.call("wallet", "charge", idempotency_key=key, **CHARGE)

    assert charged["balance"] == 1550
    assert caught.value.code == "token-revoked"
    assert caught.value.details.get("reason") == "revoked"
    charges = box.store.query(
        "SELECT id FROM ledger_transactions WHERE kind = 'charge'"
    )
    assert len(charges) == 1
    assert box.requests.counts["replayed"] == 0
    assert box.requests.counts["token-revoked"] == 1


# A request topic names its sender, and the broker lets each terminal publish
# requests only on its own topic.

REASON_NOT_AUTHORIZED = 135
BUS_TIMEOUT_S = 10.0


async def paho_request(
    broker: BrokerHandle,
    credentials: SiteCredentials,
    username: str,
    topic: str,
    payload: bytes,
    response_topic: str,
) -> int:
    """Publish a request at QoS 1 with paho-mqtt; return the PUBACK reason code.

    aiomqtt does not report the reason code of a PUBACK, so paho is used.
    """
    password = credentials.account(username).password
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = response_topic
    properties.CorrelationData = b"foreign-request"
    result = await publish_with_paho(
        broker,
        username,
        password,
        topic,
        payload,
        properties=properties,
        timeout_s=BUS_TIMEOUT_S,
    )
    assert result.connack == 0, f"login of {username} failed"
    assert result.puback is not None
    return result.puback


@pytest.mark.parametrize(
    ("username", "topic"),
    [
        pytest.param(
            "terminal-merch-1",
            "nightbox/test/terminal/bar-1/api/wallet/charge",
            id="merch-1 on bar-1's topic",
        ),
        pytest.param(
            "terminal-bar-1",
            "nightbox/test/api/wallet/charge",
            id="bar-1 on the shared api topic",
        ),
    ],
)
async def test_charge_on_foreign_topic_denied(
    box: Box,
    terminal,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    username: str,
    topic: str,
) -> None:
    # The request is complete and valid for bar-1: bar-1's token and reply
    # topic. Only the topic's owner is wrong.
    key = uuid.uuid4().hex
    body = {
        "data": {**CHARGE, "idempotency_key": key},
        "deadline": time.time() + 60,
        "token": box.tokens.issue("bar-1", ["pos:charge"], 3600).token,
    }
    payload = envelope.encode("terminal/bar-1", body)

    async with terminal("desk-2", "wallet:topup") as desk:
        await top_up(desk, BAND, 2000)
        before = ledger_counts(box.store)
        counts_before = dict(box.requests.counts)
        reason = await paho_request(
            mosquitto,
            credentials,
            username,
            topic,
            payload,
            box.bus.topics.reply("terminal", "bar-1"),
        )
        # The box handles messages in arrival order, so once this reply is
        # in, it has seen anything the broker let through before it.
        with pytest.raises(RequestError) as sync_error:
            await desk.call("wallet", "nothing")

    assert topic.startswith(f"nightbox/{box.bus.topics.site}/")
    assert reason == REASON_NOT_AUTHORIZED
    assert sync_error.value.code == "unknown-action"
    assert ledger_counts(box.store) == before
    assert box.store.query("SELECT 1 FROM requests WHERE key = ?", (key,)) == []
    assert dict(box.requests.counts) == {**counts_before, "unknown-action": 1}
    assert box.bus.stats.rejected == {"unknown-action": 1}


async def test_charge_other_terminals_token_replayed(
    box: Box, terminal, make_client
) -> None:
    async with terminal("desk-2", "wallet:topup") as desk:
        await top_up(desk, BAND, 2000)
    before = ledger_counts(box.store)
    bar_token = box.tokens.issue("bar-1", ["pos:charge"], 3600).token
    key = uuid.uuid4().hex

    async with make_client("terminal-merch-1", "terminal", "merch-1") as merch:
        with pytest.raises(RequestError) as caught:
            await merch.request(
                merch.topics.device_api("terminal", "merch-1", "wallet", "charge"),
                {**CHARGE, "idempotency_key": key},
                timeout_s=5.0,
                token=bar_token,
            )

    assert caught.value.code == "token-replayed"
    assert caught.value.details.get("reason") == "replayed"
    assert ledger_counts(box.store) == before
    assert box.store.query("SELECT 1 FROM requests WHERE key = ?", (key,)) == []
    assert box.requests.counts["token-replayed"] == 1
    assert box.requests.counts["wallet/charge:ok"] == 0
