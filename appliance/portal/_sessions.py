"""Portal sessions, CSRF tokens and the idempotency keys of the portal's forms.

A session cookie (``nb_session``) contains 32 random bytes in base64url.
The store keeps only their SHA-256 with the band and the expiry, so a copy
of the database opens no session. A form carries a CSRF token: the HMAC of the
session cookie, or of the pre-session cookie ``nb_csrf`` on pages without a
session. The token proves that the form was rendered for the browser that
posts it, because another site can neither read those cookies nor compute
the HMAC without the box's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from appliance.clock import Clock
from appliance.store import Store

SESSION_COOKIE = "nb_session"
PRESESSION_COOKIE = "nb_csrf"
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
# A form id is drawn per rendered form; the request key is derived from it.
_FORM_ID = re.compile(r"^[A-Za-z0-9_-]{22}\Z")
_CSRF_LABEL = b"nightbox portal csrf\x00"
_REQUEST_KEY_LABEL = b"nightbox portal request key\x00"


def new_cookie_value() -> str:
    """Return 32 random bytes in unpadded base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def new_form_id() -> str:
    """Return a random id for one rendered form (16 bytes, 22 characters)."""
    return secrets.token_urlsafe(16)


def is_cookie_value(text: str | None) -> bool:
    """Return whether ``text`` looks like a value of :func:`new_cookie_value`."""
    return text is not None and _COOKIE_VALUE.match(text) is not None


def is_form_id(text: str) -> bool:
    """Return whether ``text`` has the shape of a value from :func:`new_form_id`."""
    return _FORM_ID.match(text) is not None


def _id_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Sessions:
    """Creates, finds and ends sessions, and makes and checks CSRF tokens.

    ``key`` is the box's band code key; the CSRF and request key secrets are
    derived from it with their own labels. ``lifetime_s`` is how long a
    session lasts from sign-in.
    """

    def __init__(self, store: Store, clock: Clock, key: bytes, lifetime_s: float):
        self._store = store
        self._clock = clock
        self._lifetime_s = lifetime_s
        self._csrf_key = hmac.new(key, _CSRF_LABEL, hashlib.sha256).digest()
        self._request_key = hmac.new(key, _REQUEST_KEY_LABEL, hashlib.sha256).digest()

    def create(self, band: str) -> str:
        """Start a session for ``band``; return the cookie value (a secret).

        Expired sessions are deleted in the same transaction.
        """
        cookie = new_cookie_value()
        now = self._clock.now()
        with self._store.transaction() as transaction:
            transaction.execute(
                "DELETE FROM portal_sessions WHERE expires_at <= ?", (now,)
            )
            transaction.execute(
                "INSERT INTO portal_sessions (id_hash, band, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (_id_hash(cookie), band, now, now + self._lifetime_s),
            )
        return cookie

    def band_of(self, cookie: str | None) -> str | None:
        """Return the band of a live session cookie, or None."""
        if cookie is None or not is_cookie_value(cookie):
            return None
        row = self._store.query_one(
            "SELECT band FROM portal_sessions WHERE id_hash = ? AND expires_at > ?",
            (_id_hash(cookie), self._clock.now()),
        )
        return None if row is None else str(row[0])

    def end(self, cookie: str | None) -> bool:
        """End the session of ``cookie``; return whether there was one."""
        if cookie is None or not is_cookie_value(cookie):
            return False
        with self._store.transaction() as transaction:
            cursor = transaction.execute(
                "DELETE FROM portal_sessions WHERE id_hash = ?", (_id_hash(cookie),)
            )
        return cursor.rowcount > 0

    def purge(self) -> int:
        """Delete expired sessions; return how many."""
        with self._store.transaction() as transaction:
            cursor = transaction.execute(
                "DELETE FROM portal_sessions WHERE expires_at <= ?",
                (self._clock.now(),),
            )
        return cursor.rowcount

    def csrf_token(self, binding: str) -> str:
        """Return the CSRF token of forms rendered for ``binding``.

        ``binding`` is ``session:<cookie>`` or ``pre:<cookie>``.
        """
        mac = hmac.new(self._csrf_key, binding.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def csrf_binding(self, token: str, bindings: list[str]) -> str | None:
        """Return the binding among ``bindings`` whose CSRF token is ``token``.

        Returns None when ``token`` matches none of them.
        """
        matched = None
        for binding in bindings:
            # Every binding is compared, so the time taken does not tell which
            # cookie a forged token was close to.
            if hmac.compare_digest(self.csrf_token(binding), token):
                matched = binding
        return matched

    def request_key(self, binding: str, form_id: str, action: str) -> str:
        """Return the idempotency key of ``action`` posted from one rendered form.

        The key is an HMAC of the browser's cookie, so a double tap sends the
        same key and buys once. A client without that cookie cannot compute
        the key, because the HMAC key stays on the box.
        """
        message = f"{binding}\x00{form_id}\x00{action}".encode()
        digest = hmac.new(self._request_key, message, hashlib.sha256).hexdigest()
        return f"portal-{digest[:40]}"
