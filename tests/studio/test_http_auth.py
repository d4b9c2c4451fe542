"""Edge tokens at the studio's HTTP server, and bearer verification itself.

Every rejected request gets the right status and a JSON reason, is counted
and logged without its token, and serves nothing of the stream. The
fixtures (a server on loopback with real tokens and a live HLS writer) come
from ``test_http.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_http import (
    START_S,
    StreamServer,
    bearer,
    server,  # noqa: F401
    store,  # noqa: F401
)

from appliance.clock import ManualClock
from appliance.store import Store
from appliance.tokens import EdgeTokens, TokenError

# Every MPEG-TS packet starts with this byte.
TS_SYNC_BYTE = b"\x47"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger, access log included."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def forged_token() -> str:
    """Return a well-formed token signed by a key that is not the box's."""
    payload = {
        "iss": "nightbox:club:box-1",
        "aud": "club",
        "sub": "viewer-1",
        "scope": "stream:view",
        "iat": int(START_S),
        "nbf": int(START_S),
        "exp": int(START_S) + 3600,
        "jti": "f" * 32,
    }
    return jwt.encode(payload, Ed25519PrivateKey.generate(), algorithm="EdDSA")


async def refused(
    running: StreamServer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, object], dict[str, str], bytes]:
    """Send a request; return its status, JSON body, headers and raw body."""
    async with running.session.request(
        method, f"{running.url}/{path}", headers=headers, params=params
    ) as response:
        raw = await response.read()
        body = await response.json(content_type=None)
        return response.status, body, dict(response.headers), raw


def first_segment(running: StreamServer) -> str:
    return next(
        line
        for line in running.stream.writer.playlist().splitlines()
        if line and line[0] != "#"
    )


async def assert_nothing_served(
    running: StreamServer, headers: dict[str, str] | None, reason: str, status: int
) -> None:
    """Check that the playlist, a segment and a control action are all refused."""
    for method, path in (
        ("GET", "live.m3u8"),
        ("GET", first_segment(running)),
        ("POST", "control/start"),
    ):
        code, body, response_headers, raw = await refused(
            running, method, path, headers
        )
        assert code == status, path
        assert body["error"] == reason, path
        assert isinstance(body["message"], str)
        assert b"#EXTM3U" not in raw
        assert not raw.startswith(TS_SYNC_BYTE)
        if status == 401:
            assert response_headers["WWW-Authenticate"].startswith("Bearer ")
    assert running.http.segments_served == 0
    assert running.http.playlists_served == 0
    assert running.control_calls == []
    assert running.http.viewers == 0


async def test_missing_token_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    await assert_nothing_served(server, None, "missing", 401)
    assert server.http.rejections == {"missing": 3}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-json-web-token-at-all",
        "Bearer " + "x" * 3000,
        "Basic dmlld2VyOnNlY3JldA==",
        "Bearer",
    ],
)
async def test_malformed_token_rejected(
    server: StreamServer,  # noqa: F811
    header: str,
) -> None:
    await assert_nothing_served(server, {"Authorization": header}, "malformed", 401)
    assert server.http.rejections == {"malformed": 3}


async def test_token_without_bearer_scheme_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    token = server.token("stream:view")
    await assert_nothing_served(server, {"Authorization": token}, "malformed", 401)


async def test_malformed_query_token_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    status, body, _headers, raw = await refused(
        server, "GET", "live.m3u8", params={"token": "abc.def.ghi-not-a-token"}
    )
    assert status == 401
    assert body["error"] == "malformed"
    assert b"#EXTM3U" not in raw


async def test_forged_token_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    await assert_nothing_served(server, bearer(forged_token()), "forged", 401)


async def test_expired_token_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    token = server.token("stream:publish", ttl_s=600)
    server.clock.advance_to(START_S + 600 + 120)
    await assert_nothing_served(server, bearer(token), "expired", 401)
    assert server.http.rejections == {"expired": 3}


async def test_revoked_token_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    token = server.token("stream:publish")
    token_id = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert server.tokens.revoke(token_id)
    await assert_nothing_served(server, bearer(token), "revoked", 401)


async def test_wrong_scope_rejected(
    server: StreamServer,  # noqa: F811
) -> None:
    token = server.token("pos:charge", "drops:manage", subject="bar-1")
    await assert_nothing_served(server, bearer(token), "wrong-scope", 403)
    assert server.http.rejections == {"wrong-scope": 3}


async def test_view_token_cannot_control(
    server: StreamServer,  # noqa: F811
) -> None:
    token = server.token("stream:view")
    for action in ("start", "stop", "clip", "overlay"):
        status, body, _headers, _raw = await refused(
            server, "POST", f"control/{action}", bearer(token)
        )
        assert status == 403
        assert body["error"] == "wrong-scope"
        assert "'stream:publish'" in str(body["message"])
    assert server.control_calls == []


async def test_refusal_logged_without_token(
    server: StreamServer,  # noqa: F811
    captured: pytest.LogCaptureFixture,
) -> None:
    token = server.token("pos:charge", subject="bar-1")
    await refused(server, "GET", "live.m3u8", bearer(token))
    await refused(server, "GET", "live.m3u8", params={"token": token})

    warnings = [
        r.getMessage()
        for r in captured.records
        if r.name == "appliance.studio.http" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "wrong-scope" in warnings[0]
    assert "/stream/live.m3u8" in warnings[0]
    assert all(token not in record.getMessage() for record in captured.records)
    assert server.http.rejections == {"wrong-scope": 2}


async def test_query_token_never_logged(
    server: StreamServer,  # noqa: F811
    captured: pytest.LogCaptureFixture,
) -> None:
    good = server.token("stream:view")
    bad = good[:-6] + "AAAAAA"
    segment = first_segment(server)
    for token in (good, bad):
        for path in ("live.m3u8", segment):
            async with server.session.get(
                f"{server.url}/{path}", params={"token": token, "_HLS_skip": "NO"}
            ) as response:
                await response.read()

    access = [r for r in captured.records if r.name == "appliance.studio.http.access"]
    assert len(access) == 4
    assert any(" 200 " in r.getMessage() for r in access)
    assert any(" 401 " in r.getMessage() for r in access)
    for record in captured.records:
        message = record.getMessage()
        assert good not in message
        assert bad not in message
        assert "token=" not in message
        assert "_HLS_skip" not in message


def test_bearer_token_not_tied_to_terminal(store: Store) -> None:  # noqa: F811
    clock = ManualClock(START_S)
    tokens = EdgeTokens(
        Ed25519PrivateKey.generate(), store, clock, issuer="box", audience="site"
    )
    issued = tokens.issue("creator-1", ["stream:publish"], 600)

    claims = tokens.verify_bearer(issued.token, ["stream:view", "stream:publish"])
    assert claims.subject == "creator-1"
    assert claims.scopes == frozenset({"stream:publish"})
    # The terminal check still holds for requests that name their sender.
    with pytest.raises(TokenError) as rejected:
        tokens.verify(issued.token, "stream:publish", "another-terminal")
    assert rejected.value.reason == "replayed"


def test_bearer_token_needs_wanted_scope(store: Store) -> None:  # noqa: F811
    tokens = EdgeTokens(
        Ed25519PrivateKey.generate(),
        store,
        ManualClock(START_S),
        issuer="box",
        audience="site",
    )
    issued = tokens.issue("bar-1", ["pos:charge"], 600)
    with pytest.raises(TokenError) as rejected:
        tokens.verify_bearer(issued.token, ["stream:view", "stream:publish"])
    assert rejected.value.reason == "wrong-scope"
    assert "'stream:view' or 'stream:publish'" in rejected.value.message
    with pytest.raises(ValueError, match="at least one scope"):
        tokens.verify_bearer(issued.token, [])
