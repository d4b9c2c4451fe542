"""Edge tokens: short-lived, scoped JWTs that the box signs and verifies itself.

A token is an RFC 7519 JWT signed with EdDSA (Ed25519, RFC 8037) by the
box's own key, which is generated on the box and never leaves its data
folder. Claims: ``iss`` (the box), ``aud`` (the site), ``sub`` (the terminal
it was issued to), ``scope`` (space-separated, as in RFC 8693), ``iat``,
``nbf``, ``exp`` and ``jti`` (the token id used for revocation).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.clock import Clock
from appliance.config import SiteConfig
from appliance.errors import NightboxError
from appliance.store import Store, Transaction
from provisioning.secret_file import write_secret_file

_LOGGER = logging.getLogger(__name__)

# Every scope a token may carry, with the requests it allows.
SCOPES: dict[str, str] = {
    "pos:charge": "charge wallets and read balances",
    "pos:refund": "refund charges",
    "pos:void": "void top-ups and charges",
    "wallet:topup": "top up wallets with cash or card at the desk",
    "drops:claim": "claim, pay for and cancel drop units for guests",
    "drops:pickup": "hand out paid drop units against their pick-up code",
    "drops:manage": "start and stop drops",
    "offers:redeem": "redeem partner offer codes",
    "kits:issue": "hand out recovery kits",
    "optin:register": "record guests' follow-up opt-ins",
    "stream:view": "watch the studio's live stream over HTTP",
    "stream:publish": "publish the studio's stream: start, stop, clips, overlays "
    "and opening drops live (also allows watching)",
    "console:admin": "operate the box from its terminal UI: tokens, drops, "
    "coupons, readers, system",
}

# The largest clock difference tolerated between the issuing and the
# verifying clock when the box's clock is trusted, in seconds.
CLOCK_SKEW_S = 60.0
# The maximum lifetime of a token: one night plus set-up.
MAX_TTL_S = 24 * 3600.0
# Verified signatures are cached by token text, so each token costs one
# Ed25519 verification (about 120 µs) per box start, not one per request.
_VERIFIED_CACHE_SIZE = 4096
_ALGORITHM = "EdDSA"
# Terminal ids follow the site configuration's id rule.
_SUBJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


class TokenError(NightboxError, ValueError):
    """A token was rejected; ``reason`` is one stable word from :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


REASONS = (
    "missing",
    "malformed",
    "forged",
    "expired",
    "not-yet-valid",
    "wrong-scope",
    "replayed",
    "revoked",
)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of a token."""

    token_id: str
    subject: str
    scopes: frozenset[str]
    issued_at: float
    not_before: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token; ``token`` is a bearer secret, never log it."""

    token: str
    claims: TokenClaims

    def __repr__(self) -> str:
        return f"IssuedToken(token=<hidden>, claims={self.claims!r})"


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Return the box's token signing key, generating it on first use (mode 0600)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise NightboxError(
                f"cannot read the token signing key {path}: {err}; move the file "
                "away to generate a new key (every issued token stops working)"
            ) from err
        if not isinstance(key, Ed25519PrivateKey):
            raise NightboxError(
                f"{path} is not an Ed25519 private key; move it away to generate one"
            )
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)
    _LOGGER.info("Generated the box's token signing key in %s", path)
    return key


def parse_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Return ``scopes`` as a set, raising TokenError for an unknown one."""
    result = frozenset(scopes)
    unknown = sorted(result - SCOPES.keys())
    if unknown:
        raise TokenError(
            "wrong-scope",
            f"unknown scope {unknown[0]!r}; use one of {', '.join(sorted(SCOPES))}",
        )
    if not result:
        raise TokenError("wrong-scope", "a token needs at least one scope")
    return result


class EdgeTokens:
    """Issues, verifies and revokes the edge tokens of one box.

    Revocations and issues are rows in the store, so ``nightbox token revoke``
    in another process takes effect on the running box's next request.
    """

    def __init__(
        self,
        key: Ed25519PrivateKey,
        store: Store,
        clock: Clock,
        *,
        issuer: str,
        audience: str,
        max_ttl_s: float = MAX_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._public_key: Ed25519PublicKey = key.public_key()
        self._store = store
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._max_ttl_s = max_ttl_s
        self._monotonic = monotonic
        self._verified: dict[str, TokenClaims] = {}
        self._first_seen: dict[str, float] = {}

    def issue(self, subject: str, scopes: Iterable[str], ttl_s: float) -> IssuedToken:
        """Sign a token for ``subject`` and record its id; the store emits an event."""
        with self._store.transaction() as transaction:
            issued = self.issue_in(transaction, subject, scopes, ttl_s)
        _LOGGER.info(
            "Issued token %s to %s with scopes %s",
            issued.claims.token_id,
            subject,
            " ".join(sorted(issued.claims.scopes)),
        )
        return issued

    def issue_in(
        self,
        transaction: Transaction,
        subject: str,
        scopes: Iterable[str],
        ttl_s: float,
    ) -> IssuedToken:
        """Sign a token and record it, with its event, in an open transaction.

        Raises TokenError for an unknown scope, an invalid subject or a
        lifetime out of range, before anything is written.
        """
        scope_set = parse_scopes(scopes)
        if not _SUBJECT.match(subject):
            raise TokenError(
                "malformed",
                f"subject {subject!r:.40} is invalid; give the terminal's id, 1-32 "
                "lowercase letters, digits and '-'",
            )
        if not 0 < ttl_s <= self._max_ttl_s:
            raise TokenError(
                "malformed",
                f"lifetime {ttl_s:g} s is out of range; give 1 s to "
                f"{self._max_ttl_s / 3600:g} h",
            )
        now = int(self._clock.now())
        claims = TokenClaims(
            token_id=uuid.uuid4().hex,
            subject=subject,
            scopes=scope_set,
            issued_at=now,
            not_before=now,
            expires_at=now + int(ttl_s),
        )
        payload = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "scope": " ".join(sorted(scope_set)),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_s),
            "jti": claims.token_id,
            # Whether the issuing clock was vouched for; a verifier that later
            # learns the real time can tell tokens issued on a wrong clock.
            "clk": "trusted" if self._clock.trusted else "untrusted",
        }
        token = jwt.encode(payload, self._key, algorithm=_ALGORITHM)
        transaction.execute(
            "INSERT INTO edge_tokens (id, subject, scopes, issued_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (claims.token_id, subject, payload["scope"], now, claims.expires_at),
        )
        transaction.emit(
            "token_issued",
            {
                "token_id": claims.token_id,
                "subject": subject,
                "scopes": sorted(scope_set),
                "expires_at": claims.expires_at,
            },
        )
        return IssuedToken(token, claims)

    def revoke(self, token_id: str, reason: str = "revoked by the operator") -> bool:
        """Revoke a token id; return False when it was already revoked."""
        with self._store.transaction() as transaction:
            if not self.revoke_in(transaction, token_id, reason):
                return False
        _LOGGER.info("Revoked token %s: %s", token_id, reason)
        return True

    def revoke_in(self, transaction: Transaction, token_id: str, reason: str) -> bool:
        """Record a revocation in an open transaction, with its outbox event.

        Returns False, writing nothing, when the token was already revoked.
        """
        cursor = transaction.execute(
            "INSERT OR IGNORE INTO revoked_tokens (id, revoked_at, reason)"
            " VALUES (?, ?, ?)",
            (token_id, self._clock.now(), reason),
        )
        if cursor.rowcount == 0:
            return False
        transaction.emit("token_revoked", {"token_id": token_id, "reason": reason})
        return True

    def verify(self, token: Any, scope: str, holder: str) -> TokenClaims:
        """Return the claims of ``token`` if it allows ``scope`` for ``holder``.

        ``holder`` is the terminal id that presented the token. Raises
        TokenError whose reason names the failed check.
        """
        claims = self._verified_claims(token)
        if claims.subject != holder:
            raise TokenError(
                "replayed",
                f"token {claims.token_id} was issued to {claims.subject!r} but "
                f"arrived from {holder!r}; a token works only for its own terminal",
            )
        self._check_scope_and_revocation(claims, (scope,))
        return claims

    def verify_bearer(self, token: Any, scopes: Iterable[str]) -> TokenClaims:
        """Return the claims of a bearer ``token`` that has any one of ``scopes``.

        A bearer token is presented where no device identity travels with the
        request (an HTTP client on the venue network), so it is not tied to
        the terminal it was issued to. Raises TokenError whose reason names
        the failed check.
        """
        accepted = tuple(scopes)
        if not accepted:
            raise ValueError("verify_bearer needs at least one scope to check")
        claims = self._verified_claims(token)
        self._check_scope_and_revocation(claims, accepted)
        return claims

    def _verified_claims(self, token: Any) -> TokenClaims:
        """Return the claims of a well-formed, correctly signed, current token."""
        if token is None:
            raise TokenError(
                "missing", "the request carries no token; add the terminal's token"
            )
        if not isinstance(token, str) or not 16 <= len(token) <= 2048:
            raise TokenError(
                "malformed", f"the token must be a JWT string, not {token!r:.40}"
            )
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        self._check_time(claims)
        return claims

    def _check_scope_and_revocation(
        self, claims: TokenClaims, scopes: tuple[str, ...]
    ) -> None:
        if claims.scopes.isdisjoint(scopes):
            expected = " or ".join(repr(scope) for scope in scopes)
            raise TokenError(
                "wrong-scope",
                f"token {claims.token_id} lacks scope {expected} (it has "
                f"{', '.join(sorted(claims.scopes))}); issue one with that scope",
            )
        if self._store.query_one(
            "SELECT 1 FROM revoked_tokens WHERE id = ?", (claims.token_id,)
        ):
            raise TokenError(
                "revoked", f"token {claims.token_id} was revoked; issue a new one"
            )

    def _verify_signature(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as err:
            raise TokenError("malformed", f"the token is not a JWT: {err}") from err
        if header.get("alg") != _ALGORITHM:
            # Accepting another algorithm ("none", HS256 keyed with the public
            # key) is the classic JWT forgery, so only EdDSA is tried.
            raise TokenError(
                "forged", f"token algorithm {header.get('alg')!r:.20} is not EdDSA"
            )
        try:
            payload = jwt.decode(
                token,
                self._public_key,
                algorithms=[_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                # _check_time checks the times, because it depends on whether
                # the box's clock can be trusted.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "sub", "scope", "iat", "exp", "jti"],
                },
            )
        except jwt.InvalidSignatureError as err:
            raise TokenError(
                "forged", "the token's signature does not match this box's key"
            ) from err
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as err:
            raise TokenError(
                "forged", f"the token was issued for another box or site: {err}"
            ) from err
        except jwt.InvalidTokenError as err:
            raise TokenError("malformed", f"the token is invalid: {err}") from err
        return _claims(payload)

    def _check_time(self, claims: TokenClaims) -> None:
        if self._clock.trusted:
            now = self._clock.now()
            if now > claims.expires_at + CLOCK_SKEW_S:
                raise TokenError(
                    "expired",
                    f"token {claims.token_id} expired at {claims.expires_at:.0f}; "
                    "issue a new one",
                )
            if now + CLOCK_SKEW_S < claims.not_before:
                raise TokenError(
                    "not-yet-valid",
                    f"token {claims.token_id} is valid from {claims.not_before:.0f};"
                    " check the box's clock",
                )
            return
        # An untrusted wall clock can be hours or years off after a power
        # cut. The box signs its own tokens, so a clock at or past a token's
        # issue time has not been set back since and still judges expiry,
        # also after a restart. A clock behind the issue time was set back,
        # and the lifetime then counts on the monotonic clock from the first
        # time this process saw the token.
        # NOTE: after the clock went back, a restart of the box restarts that
        # count, so such a token works for up to its lifetime after each
        # restart until the clock passes its issue time again.
        now = self._clock.now()
        if now + CLOCK_SKEW_S >= claims.issued_at:
            if now > claims.expires_at + CLOCK_SKEW_S:
                raise TokenError(
                    "expired",
                    f"token {claims.token_id} expired at {claims.expires_at:.0f} "
                    "by the box's clock; issue a new one",
                )
            return
        first_seen = self._first_seen.setdefault(claims.token_id, self._monotonic())
        lifetime = claims.expires_at - claims.issued_at
        if self._monotonic() - first_seen > lifetime + CLOCK_SKEW_S:
            raise TokenError(
                "expired",
                f"token {claims.token_id} outlived its {lifetime:.0f} s lifetime "
                "(counted since first use, because the box's clock went back)",
            )


def _claims(payload: dict[str, Any]) -> TokenClaims:
    def number(name: str) -> float:
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TokenError("malformed", f"claim {name!r} must be a number")
        return float(value)

    scope = payload.get("scope")
    subject = payload.get("sub")
    token_id = payload.get("jti")
    if not isinstance(scope, str) or not isinstance(subject, str):
        raise TokenError("malformed", "claims 'scope' and 'sub' must be strings")
    if not isinstance(token_id, str):
        raise TokenError("malformed", "claim 'jti' must be a string")
    issued_at = number("iat")
    expires_at = number("exp")
    not_before = number("nbf") if "nbf" in payload else issued_at
    if expires_at <= issued_at or expires_at - issued_at > MAX_TTL_S:
        raise TokenError("malformed", f"token {token_id} has an invalid lifetime")
    return TokenClaims(
        token_id=token_id,
        subject=subject,
        scopes=frozenset(scope.split()),
        issued_at=issued_at,
        not_before=not_before,
        expires_at=expires_at,
    )


def box_tokens(config: SiteConfig, store: Store, clock: Clock) -> EdgeTokens:
    """Return the token authority of the box that ``config`` describes."""
    key = load_or_create_key(config.data_dir / "secrets" / "edge-token-key.pem")
    return EdgeTokens(
        key,
        store,
        clock,
        issuer=f"nightbox:{config.site_id}:{config.box_id}",
        audience=config.site_id,
        max_ttl_s=config.commerce.token_max_ttl_s,
    )
